//! SIP message parsing (the stack's parser plus every header parser of ours) must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callplane_sip::parse::parse_message(data);
    let mut buf = data.to_vec();
    let n = buf.len();
    let _ = callplane_sip::screen::screen(&mut buf, n);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = callplane_sip::digest::DigestCredentials::parse(text);
    }
    let _ = callplane_sip::info_dtmf::parse_info_dtmf(Some("application/dtmf-relay"), data);
});
