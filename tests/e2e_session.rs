//! The call's session never waits on IO inline: while a SAY block's speech is still being
//! rendered (a stand-in for espeak-ng that sleeps first), the caller's CANCEL (before answer:
//! the 200 OK waits for the audio) or BYE (a SAY later in the plan) ends the call at once — the
//! CDR shows the call as long as the caller kept it, not as long as the synthesiser took.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

/// A synthesiser that takes 5 s before it speaks text containing "slowly" (a loaded TTS host,
/// a hung engine) and speaks anything else at once. The text comes on stdin.
fn slow_espeak(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "callplane-slow-espeak-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("slow-espeak.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\ntext=$(cat)\ncase \"$text\" in *slowly*) sleep 5;; esac\n\
         printf '%s' \"$text\" | exec espeak-ng \"$@\"\n",
    )
    .expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn server_with_plan(espeak: &std::path::Path, blocks: &str) -> Server {
    let mut prov = tenant_with_prompts();
    prov.push_str(&number_with_plan("700", "say", blocks));
    Server::start_with(
        &prov,
        ServerOptions {
            extra_server: format!("espeakPath = {:?}\n", espeak.to_string_lossy()),
            ..ServerOptions::default()
        },
    )
}

/// The CDR's end time minus its start time, in ms (SQLite reads the RFC 3339 texts).
fn call_length_ms(server: &Server, sip_call_id: &str) -> f64 {
    server
        .db()
        .query_row(
            "SELECT (julianday(end_time) - julianday(start_time)) * 86400000.0 \
             FROM cdrs WHERE sip_call_id = ?1",
            [sip_call_id],
            |r| r.get(0),
        )
        .expect("the call's CDR")
}

#[test]
fn cancel_while_say_is_still_rendering_ends_the_call_at_once() {
    let espeak = slow_espeak("cancel");
    let server = server_with_plan(
        &espeak,
        r##"  { blockType = "SAY", text = "This text renders slowly" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##,
    );
    let rtp = RtpPeer::new();
    const CANCEL_AFTER_MS: i64 = 500;
    // Only 100 Trying comes back while the speech renders: no 180, no 200 (either fails the
    // scenario).
    let sipp = Sipp::uac("uac_cancel_after_trying.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .set("cancel_after_ms", CANCEL_AFTER_MS)
        .run();
    sipp.assert_success(&server.log_tail());
    let finals = sipp.final_responses("INVITE");
    assert_eq!(
        finals.first().and_then(|m| m.status()),
        Some(487),
        "{}",
        sipp.report()
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_by, "caller", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_cause, "ORIGINATOR_CANCEL", "{}", cdr_text(&cdr));
    assert!(cdr.answer_time.is_none(), "{}", cdr_text(&cdr));
    // Ended within 100 ms of the caller's CANCEL, not when the 5 s rendering finished.
    let length = call_length_ms(&server, &sipp.call_id);
    assert!(
        length < (CANCEL_AFTER_MS + 100) as f64,
        "the caller cancelled {CANCEL_AFTER_MS} ms after its 100 Trying while the speech was \
         rendering; the call ended only after {length:.0} ms\n{}",
        server.log_tail()
    );
    let _ = std::fs::remove_dir_all(espeak.parent().unwrap_or(&espeak));
}

#[test]
fn bye_while_say_is_still_rendering_ends_the_call_at_once() {
    let espeak = slow_espeak("bye");
    // The first SAY renders at once, answers and plays for about half a second; the second
    // takes 5 s to render, and the caller hangs up 1.5 s after answer, while it renders.
    let server = server_with_plan(
        &espeak,
        r##"  { blockType = "SAY", text = "Hello" },
  { blockType = "SAY", text = "This text renders slowly" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##,
    );
    let rtp = RtpPeer::new();
    const HANGUP_AFTER_MS: i64 = 1500;
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
