//! An ANNOUNCEMENT played into a connected call (`POST /v1/calls/{id}/blocks`), against the
//! real binary: a SIPp caller bridged to a SIPp callee, each with a test RtpPeer sending its own
//! tone. While the announcement (a third tone) plays, each party hears it *together with* the
//! other party's tone — mixed, not substituted — and never its own; afterwards the two relay as
//! before. A call with no connected callee, or a block that cannot run on a call yet, is 409.

mod common;

use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "cp_bridge_announcement_admin_key_0123";
const CALLER_HZ: f64 = 500.0;
const CALLEE_HZ: f64 = 1300.0;
const ANNOUNCEMENT_HZ: f64 = 900.0;
const HEARD: f64 = 1200.0;
const SILENT: f64 = 300.0;

fn levels(pcm: &[i16]) -> String {
    format!(
        "{} samples; caller {CALLER_HZ} Hz: {:.0}, callee {CALLEE_HZ} Hz: {:.0}, announcement {ANNOUNCEMENT_HZ} Hz: {:.0}",
        pcm.len(),
        tone_amplitude(pcm, CALLER_HZ),
        tone_amplitude(pcm, CALLEE_HZ),
        tone_amplitude(pcm, ANNOUNCEMENT_HZ)
    )
}

fn post_blocks(server: &Server, id: &str, body: serde_json::Value) -> http::HttpResponse {
    http::json(
        server.http_port(),
        "POST",
        &format!("/v1/calls/{id}/blocks"),
        Some(KEY),
        Some(&body),
    )
}

#[test]
fn an_announcement_into_a_connected_call_is_heard_with_the_far_end() {
    let wav = std::env::temp_dir().join(format!(
        "callplane-e2e-chime-{}-{}.wav",
        std::process::id(),
        free_port()
    ));
    std::fs::write(
        &wav,
        pcm16_wav(8000, 1, &sine(ANNOUNCEMENT_HZ, 1.5, 5000.0)),
    )
    .expect("write WAV");

    let callee_rtp = RtpPeer::new();
    let mut callee = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        // Long enough that the first POST below finds the callee still ringing.
        .set("answer_delay_ms", 1500)
        .set("hangup_after_ms", 0)
        .timeout_s(60)
        .spawn();
    callee.wait_listening();
    let wav_toml = format!("{:?}", wav.to_string_lossy());
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}\
         [[announcements]]\ntenant = \"t1\"\nname = \"chime\"\nfile = {}\n\n{}{}",
        tenant_with_prompts(),
        wav_toml,
        trunk("callee", callee.port()),
        number_with_plan(
            "500",
            "b",
            r##"  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "callee", timeout = 15 } ] },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##
        )
    );
    let server = Server::start(&prov, true);
    let caller_rtp = RtpPeer::new();
    let mut caller = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("500")
        .set("rtp_port", caller_rtp.port())
        .set("hangup_after_ms", 9000)
        .timeout_s(60)
        .spawn();
    let id = server.started_call_id();

    // Before the callee answers: nothing to play into.
    let r = post_blocks(
        &server,
        &id,
        serde_json::json!({"blocks": [{"blockType": "ANNOUNCEMENT", "announcementName": "chime"}]}),
    );
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(r.text().contains("connected callee"), "{}", r.describe());

    let ok = caller.wait_for_message("the 200 OK to the caller", Duration::from_secs(15), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    let invite = callee.wait_for_message("the INVITE to the callee", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    caller_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP in the 200 OK"));
    callee_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP in the INVITE"));

    // Both parties talk for 6 s; the announcement starts 1.5 s in and lasts 1.5 s.
    let start = Instant::now();
    let mut played = None;
    std::thread::scope(|s| {
        s.spawn(|| caller_rtp.send_pcm(&sine(CALLER_HZ, 6.0, 6000.0)));
        s.spawn(|| callee_rtp.send_pcm(&sine(CALLEE_HZ, 6.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(1500));
        // Not an ANNOUNCEMENT or SAY: refused, naming the block.
        let r = post_blocks(
            &server,
            &id,
            serde_json::json!({"blocks": [{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]}),
        );
        assert_eq!(r.status, 409, "{}", r.describe());
        assert_eq!(
            r.error().1.as_deref(),
            Some("blocks[0].blockType"),
            "{}",
            r.describe()
        );
        // An invalid block: a validation error naming index and field.
        let r = post_blocks(
            &server,
            &id,
            serde_json::json!({"blocks": [{"blockType": "ANNOUNCEMENT"}]}),
        );
        assert_eq!(r.status, 400, "{}", r.describe());
        assert_eq!(
            r.error().1.as_deref(),
            Some("blocks[0].announcementName"),
            "{}",
            r.describe()
        );
        let r = post_blocks(
            &server,
            &id,
            serde_json::json!({"blocks": [{"blockType": "ANNOUNCEMENT", "announcementName": "chime"}]}),
        );
        assert_eq!(r.status, 202, "{}", r.describe());
        assert_eq!(r.json()["mixedInto"], "bridge", "{}", r.describe());
        played = Some(Instant::now());
    });
    let played = played.expect("posted");
    let before = (start + Duration::from_millis(300), played);
    // The announcement renders (a file: milliseconds) and plays 1.5 s: measure its middle.
    let during = (
        played + Duration::from_millis(400),
        played + Duration::from_millis(1300),
    );
    let after = (
        played + Duration::from_millis(2300),
        start + Duration::from_millis(5800),
    );

    let caller_result = caller.wait();
    caller_result.assert_success(&server.log_tail());
    callee.wait().assert_success(&server.log_tail());
    let _ = std::fs::remove_file(&wav);

    for (who, rtp, other_hz, own_hz) in [
        ("caller", &caller_rtp, CALLEE_HZ, CALLER_HZ),
        ("callee", &callee_rtp, CALLER_HZ, CALLEE_HZ),
    ] {
        let b = rtp.heard(before.0, before.1);
        let d = rtp.heard(during.0, during.1);
        let a = rtp.heard(after.0, after.1);
        println!("{who} before: {}", levels(&b));
        println!("{who} during: {}", levels(&d));
        println!("{who} after:  {}", levels(&a));
        let ctx = || {
            format!(
                "{who}\n before: {}\n during: {}\n after: {}\n{}",
                levels(&b),
                levels(&d),
                levels(&a),
                server.log_tail()
            )
        };
        assert!(
            d.len() > 4000,
            "{who} received too little while the announcement played: {}",
            ctx()
        );
        assert!(
            tone_amplitude(&b, other_hz) > HEARD,
            "{who} hears the other party before: {}",
            ctx()
        );
        assert!(
            tone_amplitude(&b, ANNOUNCEMENT_HZ) < SILENT,
            "no announcement before: {}",
            ctx()
        );
        assert!(
            tone_amplitude(&d, ANNOUNCEMENT_HZ) > HEARD,
            "{who} hears the announcement: {}",
            ctx()
        );
        assert!(
            tone_amplitude(&d, other_hz) > HEARD,
            "{who} still hears the other party while it plays (mixed, not substituted): {}",
            ctx()
        );
        assert!(
            tone_amplitude(&d, own_hz) < SILENT,
            "{who} never hears itself: {}",
            ctx()
        );
        assert!(
            tone_amplitude(&a, other_hz) > HEARD,
            "{who} hears the other party after: {}",
            ctx()
        );
        assert!(
            tone_amplitude(&a, ANNOUNCEMENT_HZ) < SILENT,
            "the announcement is over: {}",
            ctx()
        );
    }

    // The bus saw the legs' states and the end of the bridge (counted on /metrics).
    let metrics = http::request(server.http_port(), "GET", "/metrics", &[], b"").text();
    for series in [
        "callplane_call_events_total{type=\"leg.state\"}",
        "callplane_call_events_total{type=\"call.bridged\"}",
        "callplane_call_events_total{type=\"call.unbridged\"}",
    ] {
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{series} missing from /metrics:\n{metrics}");
    }
    let legs = metrics
        .lines()
        .find_map(|l| l.strip_prefix("callplane_call_events_total{type=\"leg.state\"}"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    // Caller: ringing, answered, ended; callee: calling, ringing, answered, ending.
    assert!(legs >= 7.0, "leg.state events: {legs}\n{metrics}");

    // The call has ended: a command on it is 409 saying so (for a while; then 404).
    let r = post_blocks(
        &server,
        &id,
        serde_json::json!({"blocks": [{"blockType": "ANNOUNCEMENT", "announcementName": "chime"}]}),
    );
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(r.text().contains("has ended"), "{}", r.describe());
}
