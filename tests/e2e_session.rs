//! The call's session never waits on IO inline: while a SAY block's speech is still being
//! rendered (a stand-in for espeak-ng that sleeps first), the caller's BYE ends the call at once
//! — the CDR shows the call as long as the caller kept it, not as long as the synthesiser took.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

/// A synthesiser that takes 5 s before it speaks (a loaded TTS host, a hung engine).
fn slow_espeak() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("callplane-slow-espeak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("slow-espeak.sh");
    std::fs::write(&path, "#!/bin/sh\nsleep 5\nexec espeak-ng \"$@\"\n").expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn bye_while_say_is_still_rendering_ends_the_call_at_once() {
    let espeak = slow_espeak();
    let mut prov = tenant_with_prompts();
    prov.push_str(&number_with_plan(
        "700",
        "say",
        r##"  { blockType = "SAY", text = "This text takes a while to render" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##,
    ));
    let server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: format!("espeakPath = {:?}\n", espeak.to_string_lossy()),
            ..ServerOptions::default()
        },
    );
    let rtp = RtpPeer::new();
    const HANGUP_AFTER_MS: i64 = 500;
    let sipp = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", HANGUP_AFTER_MS)
        .run();
    sipp.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_by, "caller", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    // Ended within 100 ms of the caller's BYE, not when the 5 s rendering finished.
    assert!(
        cdr.talk_time_ms < HANGUP_AFTER_MS + 100,
        "the caller hung up {HANGUP_AFTER_MS} ms after answer while the speech was rendering; \
         the call ended only after {} ms\n{}",
        cdr.talk_time_ms,
        server.log_tail()
    );
    let _ = std::fs::remove_dir_all(espeak.parent().unwrap_or(&espeak));
}
