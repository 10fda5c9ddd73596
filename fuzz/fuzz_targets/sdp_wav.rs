//! SDP offers and WAV uploads come from outside too: parse, negotiate and decode never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(sd) = callplane_media::SessionDescription::parse(text) {
            let _ = callplane_media::negotiate(&sd);
        }
    }
    let _ = callplane_media::decode_wav_8k(data);
});
