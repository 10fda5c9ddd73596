//! CONFERENCE against the real binary with SIPp callers whose media is a test RtpPeer: every
//! caller sends its own tone, and what each one receives is decoded and measured (Goertzel
//! amplitude per tone): a member hears the others and never itself; a `joinMuted` member is
//! heard by nobody and hears everyone; a member that hangs up is no longer heard; a member with
//! `endConferenceOnExit` ends the others' calls (BYE) and their plans go on with
//! `conference_result=ended`; `maxParticipants` refuses the next caller
//! (`conference_result=full`); twenty callers in one room all hear the two who speak.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEARD: f64 = 1500.0;
const SILENT: f64 = 300.0;
const AMPLITUDE: f64 = 6000.0;

fn conference_plan(name: &str, extra: &str, after: &str) -> String {
    format!("  {{ blockType = \"CONFERENCE\", conferenceName = \"{name}\"{extra} }},\n  {after}")
}

const CLEARING: &str = r#"{ blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"#;

fn server_with(numbers: &[(&str, String)]) -> Server {
    let mut prov = tenant_with_prompts();
    for (i, (number, blocks)) in numbers.iter().enumerate() {
        prov.push_str(&number_with_plan(number, &format!("conf{i}"), blocks));
    }
    Server::start(&prov, true)
}

struct Caller {
    sipp: SippProcess,
    rtp: Arc<RtpPeer>,
    joined: Instant,
}

/// Places a call to `number`; `hangup_after_ms` → the caller hangs up itself, else it waits for
/// the server's BYE. Returns once the caller receives the room's audio.
fn join(server: &Server, number: &str, hangup_after_ms: Option<u64>) -> Caller {
    let rtp = Arc::new(RtpPeer::new());
    let sipp = match hangup_after_ms {
        Some(ms) => Sipp::uac("uac_hangup_after.xml", server.sip_addr()).set("hangup_after_ms", ms),
        None => Sipp::uac("uac_announcement.xml", server.sip_addr()),
    }
    .service(number)
    .set("rtp_port", rtp.port())
    .timeout_s(60)
    .spawn();
    rtp.wait_for_packets(1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("caller of {number}: {e}\n{}", server.log_tail()));
    Caller {
        sipp,
        rtp,
        joined: Instant::now(),
    }
}

fn tone(freq: f64, secs: f64) -> Vec<i16> {
    sine(freq, secs, AMPLITUDE)
}

/// What `c` received between `from` and `to`, decoded.
fn heard(c: &Caller, from: Instant, to: Instant) -> Vec<i16> {
    let packets: Vec<RtpPacket> = c
        .rtp
        .packets()
        .into_iter()
        .filter(|p| p.arrival >= from && p.arrival <= to)
        .collect();
    pcm_of(&packets)
}

/// Sends each (caller, frequency) tone for `secs` at the same time; returns when they started.
fn speak(speakers: &[(&Caller, f64)], secs: f64) -> Instant {
    let start = Instant::now();
    std::thread::scope(|s| {
        for (c, f) in speakers {
            let rtp = c.rtp.clone();
            let samples = tone(*f, secs);
            s.spawn(move || rtp.send_pcm(&samples));
        }
    });
    start
}

fn describe(pcm: &[i16], freqs: &[f64]) -> String {
    freqs
        .iter()
        .map(|f| format!("{f} Hz: {:.0}", tone_amplitude(pcm, *f)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn assert_hears(who: &str, pcm: &[i16], present: &[f64], absent: &[f64], server: &Server) {
    let all: Vec<f64> = present.iter().chain(absent).copied().collect();
    println!("  {who}: {} samples; {}", pcm.len(), describe(pcm, &all));
    assert!(
        pcm.len() > 4000,
        "{who} received only {} samples in the window\n{}",
        pcm.len(),
        server.log_tail()
    );
    for f in present {
        assert!(
            tone_amplitude(pcm, *f) > HEARD,
            "{who} should hear the {f} Hz tone: {}\n{}",
            describe(pcm, &all),
            server.log_tail()
        );
    }
    for f in absent {
        assert!(
            tone_amplitude(pcm, *f) < SILENT,
            "{who} should not hear the {f} Hz tone: {}\n{}",
            describe(pcm, &all),
            server.log_tail()
        );
    }
}

#[test]
fn three_callers_each_hear_the_other_two_and_not_themselves() {
    let server = server_with(&[("300", conference_plan("sales", "", CLEARING))]);
    let freqs = [500.0, 1100.0, 1700.0];
    let callers: Vec<Caller> = (0..3).map(|_| join(&server, "300", Some(7000))).collect();
    std::thread::sleep(Duration::from_millis(400)); // the last enter beep is over
    let start = speak(&callers.iter().zip(freqs).collect::<Vec<_>>(), 3.0);
    for (i, c) in callers.iter().enumerate() {
        let pcm = heard(
            c,
            start + Duration::from_millis(600),
            start + Duration::from_millis(2700),
        );
        let others: Vec<f64> = freqs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, f)| *f)
            .collect();
        assert_hears(&format!("caller {i}"), &pcm, &others, &[freqs[i]], &server);
    }
    for c in callers {
        c.sipp.wait().assert_success(&server.log_tail());
    }
}

#[test]
fn a_muted_member_is_heard_by_nobody_and_hears_everyone() {
    let server = server_with(&[
        ("300", conference_plan("m", "", CLEARING)),
        ("301", conference_plan("m", ", joinMuted = true", CLEARING)),
    ]);
    let a = join(&server, "300", Some(6000));
    let b = join(&server, "300", Some(6000));
    let muted = join(&server, "301", Some(6000));
    std::thread::sleep(Duration::from_millis(400));
    let start = speak(&[(&a, 500.0), (&b, 1100.0), (&muted, 1700.0)], 3.0);
    let (from, to) = (
        start + Duration::from_millis(600),
        start + Duration::from_millis(2700),
    );
    assert_hears(
        "a",
        &heard(&a, from, to),
        &[1100.0],
        &[500.0, 1700.0],
        &server,
    );
    assert_hears(
        "b",
        &heard(&b, from, to),
        &[500.0],
        &[1100.0, 1700.0],
        &server,
    );
    assert_hears(
        "muted",
        &heard(&muted, from, to),
        &[500.0, 1100.0],
        &[1700.0],
        &server,
    );
    for c in [a, b, muted] {
        c.sipp.wait().assert_success(&server.log_tail());
    }
}

#[test]
fn a_member_that_hangs_up_is_no_longer_heard() {
    let server = server_with(&[("300", conference_plan("leave", "", CLEARING))]);
    let a = join(&server, "300", Some(8000));
    let b = join(&server, "300", Some(8000));
    let leaver = join(&server, "300", Some(2500));
    let leaves_at = leaver.joined + Duration::from_millis(2500);
    std::thread::sleep(Duration::from_millis(300));
    let start = speak(&[(&a, 500.0), (&b, 1100.0), (&leaver, 1700.0)], 5.0);
    let before = (
        start + Duration::from_millis(400),
        leaves_at - Duration::from_millis(500),
    );
    let after = (
        leaves_at + Duration::from_millis(800),
        start + Duration::from_millis(4800),
    );
    assert_hears(
        "a before",
        &heard(&a, before.0, before.1),
        &[1100.0, 1700.0],
        &[500.0],
        &server,
    );
    assert_hears(
        "a after",
        &heard(&a, after.0, after.1),
        &[1100.0],
        &[500.0, 1700.0],
        &server,
    );
    assert_hears(
        "b after",
        &heard(&b, after.0, after.1),
        &[500.0],
        &[1100.0, 1700.0],
        &server,
    );
    for c in [a, b, leaver] {
        c.sipp.wait().assert_success(&server.log_tail());
    }
}

#[test]
fn end_conference_on_exit_ends_the_others_calls_with_bye() {
    let server = server_with(&[
        ("300", conference_plan("board", "", CLEARING)),
        (
            "301",
            conference_plan("board", ", endConferenceOnExit = true", CLEARING),
        ),
    ]);
    let a = join(&server, "300", None);
    let b = join(&server, "300", None);
    let chair = join(&server, "301", Some(1500));
    let chair_result = chair.sipp.wait();
    chair_result.assert_success(&server.log_tail());
    for (name, c) in [("a", a), ("b", b)] {
        let r = c.sipp.wait();
        r.assert_success(&format!(
            "{name} should get the server's BYE\n{}",
            server.log_tail()
        ));
        assert!(
            r.received_request("BYE").is_some(),
            "{name}: no BYE\n{}",
            r.report()
        );
        let cdr = server.cdr_for_call_id(&r.call_id);
        assert_eq!(
            cdr.variables.get("conference_result").map(String::as_str),
            Some("ended"),
            "{}",
            cdr_text(&cdr)
        );
        assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    }
}

#[test]
fn max_participants_refuses_the_next_caller() {
    let server = server_with(&[(
        "300",
        conference_plan(
            "small",
            ", maxParticipants = 2",
            r#"{ blockType = "HANGUP", hangupCause = "USER_BUSY" },"#,
        ),
    )]);
    let a = join(&server, "300", Some(4000));
    let b = join(&server, "300", Some(4000));
    let third = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("300")
        .set("rtp_port", RtpPeer::new().port())
        .run();
    third.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&third.call_id);
    assert_eq!(
        cdr.variables.get("conference_result").map(String::as_str),
        Some("full"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "USER_BUSY", "{}", cdr_text(&cdr));
    for c in [a, b] {
        let r = c.sipp.wait();
        r.assert_success(&server.log_tail());
        let cdr = server.cdr_for_call_id(&r.call_id);
        assert_eq!(
            cdr.variables.get("conference_result"),
            None,
            "{}",
            cdr_text(&cdr)
        );
    }
}

#[test]
fn twenty_callers_all_hear_the_two_who_speak() {
    let server = server_with(&[("300", conference_plan("big", "", CLEARING))]);
    let callers: Vec<Caller> = (0..20).map(|_| join(&server, "300", Some(12000))).collect();
    std::thread::sleep(Duration::from_millis(400));
    let start = speak(&[(&callers[0], 500.0), (&callers[1], 1100.0)], 3.0);
    let (from, to) = (
        start + Duration::from_millis(600),
        start + Duration::from_millis(2700),
    );
    assert_hears(
        "speaker 0",
        &heard(&callers[0], from, to),
        &[1100.0],
        &[500.0],
        &server,
    );
    assert_hears(
        "speaker 1",
        &heard(&callers[1], from, to),
        &[500.0],
        &[1100.0],
        &server,
    );
    for (i, c) in callers.iter().enumerate().skip(2) {
        assert_hears(
            &format!("listener {i}"),
            &heard(c, from, to),
            &[500.0, 1100.0],
            &[],
            &server,
        );
    }
    for c in callers {
        c.sipp.wait().assert_success(&server.log_tail());
    }
}
