//! COLLECT_DIGITS end to end: digits sent by RFC 4733 telephone-events, by SIP INFO and as
//! in-band tones land in the block's variable (read from the CDR); a digit stops the prompt
//! (barge-in); too few digits play the error prompt (detected in the received audio) and the
//! block retries; when the tries run out the variable is empty and the plan goes on.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// COLLECT_DIGITS into `pin`, then HANGUP NORMAL_CLEARING.
fn collect_plan(min: u32, max: u32, tries: u32, timeout_s: u32) -> String {
    format!(
        r##"  {{ blockType = "COLLECT_DIGITS", announcementName = "enter-digits", errorAnnouncementName = "invalid", variableName = "pin", minDigits = {min}, maxDigits = {max}, terminator = "#", maxTries = {tries}, timeout = {timeout_s} }},
  {{ blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" }},"##
    )
}

fn collect_server(min: u32, max: u32, tries: u32, timeout_s: u32) -> Server {
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan("200", "collect", &collect_plan(min, max, tries, timeout_s))
    );
    Server::start(&prov, true)
}

/// How many decoded frames in `packets` carry sound.
fn audible_frames(packets: &[RtpPacket]) -> usize {
    packets
        .iter()
        .filter(|p| p.pt == 0)
        .filter(|p| {
            let pcm: Vec<i16> = p.payload.iter().map(|&c| ulaw_decode(c)).collect();
            is_audible(&pcm)
        })
        .count()
}

#[test]
fn rfc4733_digits_fill_the_variable_and_barge_in() {
    let server = collect_server(3, 5, 2, 5);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("200")
        .set("rtp_port", rtp.port())
        .spawn();

    // The prompt starts (2.4 s long); the first digit should stop it.
    rtp.wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
    rtp.send_rfc4733("1", 101, 5);
    let after_digit = Instant::now();
    // Observation window: the prompt would go on for ~2 s; with barge-in it stops at once.
    std::thread::sleep(Duration::from_millis(900));
    let packets = rtp.packets();
    let late = &packets[first_packet_after(&packets, after_digit + Duration::from_millis(300))..];
    assert!(
        audible_frames(late) == 0,
        "barge-in: the prompt should stop when a digit arrives, but {} audible frames arrived \
         between 0.3 s and 0.9 s after the digit\n{}",
        audible_frames(late),
        server.log_tail()
    );

    rtp.send_rfc4733("23#", 101, 5);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());

    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some("123"),
        "digits 1,2,3 then # by RFC 4733 should fill pin\n{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING");
    // Three digits on the first try: the error prompt was never played.
    let invalid = prompt("invalid");
    let heard = find_audio(&pcm_of(&rtp.packets()), &invalid.samples);
    assert!(
        heard.is_none_or(|(_, c)| c < 0.5),
        "the error prompt was played although the input was valid (correlation {heard:?})"
    );
}

#[test]
fn sip_info_digits_fill_the_variable() {
    let server = collect_server(3, 5, 2, 5);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_info_dtmf.xml", server.sip_addr())
        .service("200")
        .set("rtp_port", rtp.port())
        .set("dtmf1", "4")
        .set("dtmf2", "2")
        .set("dtmf3", "7")
        .set("dtmf4", "#")
        .set("info_delay_ms", 500)
        .run();
    caller.assert_success(&server.log_tail());
    let info_ok = caller
        .received()
        .filter(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INFO"))
        .count();
    assert_eq!(
        info_ok,
        4,
        "each INFO should be answered 200\n{}",
        caller.report()
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some("427"),
        "INFO digits 4,2,7 then # should fill pin\n{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING");
}

#[test]
fn inband_dtmf_is_detected_without_telephone_event() {
    let server = collect_server(2, 4, 2, 5);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_pcmu_only.xml", server.sip_addr())
        .service("200")
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
    rtp.send_silence(5);
    rtp.send_inband("58#", 5);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let answer = caller
        .received()
        .find(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .expect("200 to the INVITE");
    assert!(
        !answer.body().contains("telephone-event"),
        "the answer must not add telephone-event that was not offered:\n{}",
        answer.body()
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some("58"),
        "in-band tones 5, 8 then # should fill pin\n{}\n{}",
        cdr_text(&cdr),
        server.log_tail()
    );
}

#[test]
fn too_few_digits_play_the_error_prompt_then_retry() {
    let server = collect_server(3, 3, 2, 5);
    let enter = prompt("enter-digits");
    let invalid = prompt("invalid");
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("200")
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));

    // One digit and the terminator: too few (minDigits 3).
    let mark = rtp.packet_count();
    rtp.send_rfc4733("1#", 101, 5);
    // The error prompt must be heard in full, then the prompt again.
    let (inv_at, corr) = rtp
        .wait_for_audio(&invalid.samples, mark, 0.9, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            panic!(
                "error prompt after too few digits: {e}\n{}",
                server.log_tail()
            )
        });
    let next = packet_index_after(mark, inv_at, invalid.samples.len());
    rtp.wait_for_audio(
        &enter.samples[..8000],
        next.saturating_sub(2),
        0.9,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| {
        panic!(
            "the prompt should play again after the error prompt (heard invalid at {inv_at}, \
                 corr {corr:.3}): {e}\n{}",
            server.log_tail()
        )
    });

    // Second try: three digits complete it (maxDigits 3, no terminator needed).
    rtp.send_rfc4733("789", 101, 5);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some("789"),
        "the second try's digits should be stored, not the first try's\n{}",
        cdr_text(&cdr)
    );
}

#[test]
fn tries_exhausted_leave_the_variable_empty_and_the_plan_goes_on() {
    // No input at all: prompt, 1 s timeout, error prompt, prompt, 1 s timeout, then on.
    let server = collect_server(2, 4, 2, 1);
    let enter = prompt("enter-digits");
    let invalid = prompt("invalid");
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("200")
        .set("rtp_port", rtp.port())
        .run();
    caller.assert_success(&server.log_tail());
    let bye = caller.received_request("BYE").expect("BYE");
    assert!(
        bye.header("Reason")
            .unwrap_or_default()
            .contains("cause=16"),
        "after the collect block gave up, the plan's HANGUP NORMAL_CLEARING runs: {}",
        bye.text
    );

    let audio = pcm_of(&rtp.packets());
    let (first, c1) = find_audio(&audio, &enter.samples).expect("audio");
    assert!(c1 > 0.9, "the prompt was not heard (corr {c1:.3})");
    let rest = &audio[first + enter.samples.len()..];
    let (inv, c2) = find_audio(rest, &invalid.samples)
        .unwrap_or_else(|| panic!("too little audio after the first prompt: {}", rest.len()));
    assert!(
        c2 > 0.9,
        "the error prompt was not heard after the first try (corr {c2:.3})"
    );
    let rest = &rest[inv + invalid.samples.len()..];
    let (_, c3) = find_audio(rest, &enter.samples)
        .unwrap_or_else(|| panic!("too little audio after the error prompt: {}", rest.len()));
    assert!(
        c3 > 0.9,
        "the prompt was not played again for the second try (corr {c3:.3})"
    );

    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some(""),
        "out of tries: the variable is set empty\n{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING");
}
