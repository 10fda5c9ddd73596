//! RTP and RFC 4733 parsing, as done for every received packet, must never panic.
#![no_main]
use callplane_media::dtmf::{Rfc4733Receiver, TelephoneEvent};
use callplane_media::rtp::{is_rtcp, RtpPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = is_rtcp(data);
    if let Ok(p) = RtpPacket::parse(data) {
        let mut rx = Rfc4733Receiver::default();
        if let Ok(ev) = TelephoneEvent::parse(p.payload) {
            let _ = rx.on_event(p.timestamp, &ev);
        }
    }
    let _ = TelephoneEvent::parse(data);
});
