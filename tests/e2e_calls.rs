//! Basic calls against the real binary: an announcement is heard (RTP decoded and compared
//! with the WAV), the plan's hangup reaches the caller as BYE with a Q.850 Reason, refusals
//! before answer map to the right SIP status, an unknown number is 404, a caller's CANCEL is
//! 487, a caller's BYE ends the call — and every one of these calls leaves a CDR row with the
//! right cause, side and status. Also `callplane config check` on a bad block field.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn server_with(plans: &[(&str, &str, &str)]) -> Server {
    let mut prov = tenant_with_prompts();
    for (number, plan, blocks) in plans {
        prov.push_str(&number_with_plan(number, plan, blocks));
    }
    Server::start(&prov, true)
}

/// The value of a Reason header's `cause=` parameter.
fn q850_cause(reason: &str) -> Option<u32> {
    reason
        .split(';')
        .find_map(|p| p.trim().strip_prefix("cause="))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn announcement_is_heard_then_bye_with_normal_clearing() {
    let server = server_with(&[("100", "main", WELCOME_THEN_CLEARING)]);
    let welcome = prompt("welcome");
    let rtp = RtpPeer::new();

    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());

    // Signalling: 200 to the INVITE, then the server's BYE with Reason Q.850 cause 16.
    let bye = sipp
        .received_request("BYE")
        .unwrap_or_else(|| panic!("no BYE from the server\n{}", sipp.report()));
    let reason = bye.header("Reason").unwrap_or_else(|| {
        panic!(
            "the BYE has no Reason header:\n{}\n{}",
            bye.text,
            server.log_tail()
        )
    });
    assert!(
        reason.starts_with("Q.850") && q850_cause(&reason) == Some(16),
        "BYE Reason should be Q.850 cause 16 (NORMAL_CLEARING), got {reason:?}"
    );
    assert!(
        reason.contains("NORMAL_CLEARING"),
        "BYE Reason text should name NORMAL_CLEARING, got {reason:?}"
    );

    // Media: the whole prompt arrived as PCMU, in order, paced in real time.
    let packets = rtp.packets();
    let expected_frames = welcome.samples.len().div_ceil(160);
    assert!(
        !packets.is_empty(),
        "no RTP reached the port in the caller's SDP ({}): the server must send to the SDP \
         address before it has received anything\n{}",
        rtp.port(),
        server.log_tail()
    );
    assert!(
        packets.iter().all(|p| p.pt == 0 && p.payload.len() == 160),
        "every packet should be PCMU (PT 0) with 160 samples (20 ms); got PTs {:?} and sizes {:?}",
        packets
            .iter()
            .map(|p| p.pt)
            .collect::<std::collections::BTreeSet<_>>(),
        packets
            .iter()
            .map(|p| p.payload.len())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        packets.len() >= expected_frames && packets.len() <= expected_frames + 10,
        "welcome.wav is {} samples = {expected_frames} frames of 20 ms; received {} packets",
        welcome.samples.len(),
        packets.len()
    );
    let ssrc = packets[0].ssrc;
    for w in packets.windows(2) {
        assert_eq!(w[1].ssrc, ssrc, "SSRC changed within one prompt");
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence numbers must increase by one (loopback loses nothing)"
        );
        assert_eq!(
            w[1].ts,
            w[0].ts.wrapping_add(160),
            "timestamps must advance 160 per 20 ms packet"
        );
    }
    let median = median_interarrival(&packets).expect("two packets");
    assert!(
        median >= Duration::from_millis(15) && median <= Duration::from_millis(25),
        "packets should be paced every 20 ms, median gap was {median:?}"
    );
    let span = packets
        .last()
        .unwrap()
        .arrival
        .duration_since(packets[0].arrival);
    assert!(
        span >= welcome.duration().mul_f64(0.75),
        "the prompt ({:?}) was sent in {span:?}: faster than real time",
        welcome.duration()
    );
    let audio = pcm_of(&packets);
    let (offset, corr) = find_audio(&audio, &welcome.samples)
        .unwrap_or_else(|| panic!("received {} samples, fewer than the prompt", audio.len()));
    assert!(
        corr > 0.95,
        "the received audio is not welcome.wav: best correlation {corr:.3} at sample {offset}"
    );

    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "system");
    assert_eq!(cdr.sip_status, Some(200));
    assert_eq!(cdr.number, "100");
    assert_eq!(cdr.caller, "sipp");
    assert_eq!(cdr.tenant.as_deref(), Some("t1"));
    assert!(
        cdr.answer_time.is_some(),
        "an answered call has an answer_time"
    );
    assert!(
        cdr.talk_time_ms >= (welcome.duration().as_millis() as i64) * 3 / 4,
        "talk time {} ms is shorter than the prompt",
        cdr.talk_time_ms
    );
}

#[test]
fn plan_that_runs_out_hangs_up_normal_unspecified() {
    let server = server_with(&[(
        "101",
        "only-welcome",
        r##"  { blockType = "ANNOUNCEMENT", announcementName = "welcome" },"##,
    )]);
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("101")
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());
    let bye = sipp.received_request("BYE").expect("BYE");
    let reason = bye.header("Reason").unwrap_or_default();
    assert_eq!(
        q850_cause(&reason),
        Some(31),
        "a plan that ends with the call up hangs up NORMAL_UNSPECIFIED (Q.850 31); Reason was {reason:?}"
    );
    assert!(rtp.packet_count() > 0, "the announcement was not played");
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_UNSPECIFIED", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "system");
}

#[test]
fn hangup_before_answer_maps_cause_to_sip_status() {
    let server = server_with(&[
        (
            "486",
            "busy",
            r##"  { blockType = "HANGUP", hangupCause = "USER_BUSY" },"##,
        ),
        (
            "480",
            "unspec",
            r##"  { blockType = "HANGUP", hangupCause = "NORMAL_UNSPECIFIED" },"##,
        ),
        (
            "404",
            "unalloc",
            r##"  { blockType = "HANGUP", hangupCause = "UNALLOCATED_NUMBER" },"##,
        ),
        (
            "603",
            "reject",
            r##"  { blockType = "HANGUP", hangupCause = "CALL_REJECTED" },"##,
        ),
    ]);
    for (number, status, cause, q850) in [
        ("486", 486, "USER_BUSY", 17),
        ("480", 480, "NORMAL_UNSPECIFIED", 31),
        ("404", 404, "UNALLOCATED_NUMBER", 1),
        ("603", 603, "CALL_REJECTED", 21),
    ] {
        let rtp = RtpPeer::new();
        let sipp = Sipp::uac("uac_expect_status.xml", server.sip_addr())
            .service(number)
            .set("rtp_port", rtp.port())
            .run();
        sipp.assert_success(&server.log_tail());
        let finals = sipp.final_responses("INVITE");
        assert_eq!(
            finals.first().and_then(|m| m.status()),
            Some(status),
            "HANGUP {cause} before answer should be a {status} final response\n{}",
            sipp.report()
        );
        let reason = finals[0].header("Reason").unwrap_or_default();
        assert_eq!(
            q850_cause(&reason),
            Some(q850),
            "the {status} should carry Reason: Q.850;cause={q850}; got {reason:?}"
        );
        assert_eq!(rtp.packet_count(), 0, "no media before answer was expected");
        let cdr = server.cdr_for_call_id(&sipp.call_id);
        assert_eq!(cdr.hangup_cause, cause, "{}", cdr_text(&cdr));
        assert_eq!(cdr.sip_status, Some(status as i64));
        assert_eq!(cdr.hangup_by, "system");
        assert!(cdr.answer_time.is_none(), "the call was never answered");
    }
}

#[test]
fn unknown_number_is_404_with_a_cdr() {
    let server = server_with(&[("100", "main", WELCOME_THEN_CLEARING)]);
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("99999")
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());
    assert_eq!(
        sipp.final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(404),
        "an unknown number must be refused with 404\n{}",
        sipp.report()
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_cause, "UNALLOCATED_NUMBER", "{}", cdr_text(&cdr));
    assert_eq!(cdr.sip_status, Some(404));
    assert_eq!(cdr.hangup_by, "system");
    assert_eq!(cdr.number, "99999");
    assert_eq!(cdr.tenant, None, "an unknown number belongs to no tenant");
}

#[test]
fn caller_hangs_up_first() {
    // The prompt is followed by a long digit wait, so the call stays up until the caller goes.
    let server = server_with(&[(
        "100",
        "wait",
        r##"  { blockType = "ANNOUNCEMENT", announcementName = "welcome" },
  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 1, maxDigits = 4, terminator = "#", maxTries = 1, timeout = 20 },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##,
    )]);
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", 1500)
        .run();
    sipp.assert_success(&server.log_tail());
    assert!(
        sipp.received_request("BYE").is_none(),
        "the server must not send BYE after the caller's"
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_by, "caller", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING");
    assert_eq!(cdr.sip_status, Some(200));
    assert!(
        (1300..6000).contains(&cdr.talk_time_ms),
        "the caller hung up 1.5 s after answer; talk_time_ms = {}",
        cdr.talk_time_ms
    );
}

#[test]
fn cancel_before_answer_is_487() {
    // A destination that rings forever keeps the call unanswered until the caller gives up.
    let mut ringer = Sipp::uas("uas_ring_forever.xml").spawn();
    ringer.wait_listening();
    let prov = format!(
        "{}{}{}",
        tenant_with_prompts(),
        trunk("ringer", ringer.port()),
        number_with_plan(
            "100",
            "ring",
            r##"  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "ringer", timeout = 20 } ] },
  { blockType = "HANGUP", hangupCause = "NO_ANSWER" },"##
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_cancel.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .set("cancel_after_ms", 700)
        .run();
    caller.assert_success(&server.log_tail());
    let finals = caller.final_responses("INVITE");
    assert_eq!(
        finals.first().and_then(|m| m.status()),
        Some(487),
        "a cancelled INVITE ends with 487\n{}",
        caller.report()
    );
    // The ringing destination was cancelled too.
    let ringer = ringer.wait();
    ringer.assert_success(&format!(
        "the destination did not get CANCEL after the caller cancelled\n{}",
        server.log_tail()
    ));

    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_cause, "ORIGINATOR_CANCEL", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "caller");
    assert_eq!(cdr.sip_status, Some(487));
    assert!(cdr.answer_time.is_none());
    let out: Vec<_> = cdr
        .legs
        .iter()
        .filter(|l| l.direction == "outbound")
        .collect();
    assert_eq!(out.len(), 1, "one outbound leg: {}", cdr_text(&cdr));
    assert_eq!(out[0].destination, "ringer");
    assert_eq!(out[0].hangup_cause, "ORIGINATOR_CANCEL");
    assert!(out[0].answer_time.is_none());
}

#[test]
fn config_check_names_file_object_and_field() {
    let dir = std::env::temp_dir().join(format!("callplane-e2e-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let config = format!(
        "[server]\ndataDir = {:?}\n\n{}{}",
        dir.join("data").to_string_lossy(),
        tenant_with_prompts(),
        number_with_plan(
            "100",
            "main",
            r##"  { blockType = "ANNOUNCEMENT", announcementName = "welcome" },
  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 1, maxDigits = 99, terminator = "#", maxTries = 3, timeout = 5 },"##
        )
    );
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callplane"))
        .args(["config", "check"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .expect("run callplane config check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}{stderr}");
    assert!(
        !out.status.success(),
        "maxDigits = 99 is out of range (1-32): config check must fail; output:\n{text}"
    );
    let file = path.to_string_lossy();
    assert!(
        text.contains(file.as_ref()),
        "the error must name the file {file}:\n{text}"
    );
    assert!(
        text.contains("routingPlans[0]") || text.contains("main"),
        "the error must name the routing plan (routingPlans[0] / main):\n{text}"
    );
    assert!(
        text.contains("blocks[1]") && text.contains("maxDigits"),
        "the error must name the block and field (blocks[1].maxDigits):\n{text}"
    );

    // The same file with the field fixed passes: the check is about that field.
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("maxDigits = 99", "maxDigits = 4");
    std::fs::write(&path, fixed).unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_callplane"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .expect("run callplane config check");
    assert!(
        ok.status.success(),
        "the corrected config must pass: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = server_with(&[("100", "main", WELCOME_THEN_CLEARING)]);
    assert!(
        server.is_alive(),
        "the server should be running\n{}",
        server.log_tail()
    );
    let status = server.stop().expect("an exit status");
    assert!(
        status.success(),
        "SIGTERM should end the server with exit code 0 within 5 s, got {status:?}\n{}",
        server.log_tail()
    );
}
