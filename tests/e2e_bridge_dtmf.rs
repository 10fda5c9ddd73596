//! DTMF pressed by the callee of a BRIDGE, against the real binary: RFC 4733 events from the
//! callee reach a caller that negotiated telephone-event (relayed), and a caller that did not
//! gets them regenerated in band (the two Q.23 tones in its audio). The session sees them too:
//! the CDR's `callee_digits` variable holds what the callee pressed.

mod common;

use common::*;
use std::time::Duration;

fn bridge_server(callee_port: u16) -> Server {
    let prov = format!(
        "{}{}{}",
        tenant_with_prompts(),
        trunk("callee", callee_port),
        number_with_plan(
            "500",
            "b",
            r##"  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "callee", timeout = 15 } ] },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##
        )
    );
    Server::start(&prov, true)
}

/// Waits for both 200/INVITE ends and points each RtpPeer at the server's media address.
fn connect(
    caller: &mut SippProcess,
    callee: &mut SippProcess,
    caller_rtp: &RtpPeer,
    callee_rtp: &RtpPeer,
) {
    let ok = caller.wait_for_message("the 200 OK to the caller", Duration::from_secs(15), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    let invite = callee.wait_for_message("the INVITE to the callee", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    caller_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP in the 200 OK"));
    callee_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP in the INVITE"));
}

#[test]
fn callee_rfc4733_digits_reach_the_caller_and_the_session() {
    let callee_rtp = RtpPeer::new();
    let mut callee = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("answer_delay_ms", 200)
        .set("hangup_after_ms", 0)
        .spawn();
    callee.wait_listening();
    let server = bridge_server(callee.port());
    let caller_rtp = RtpPeer::new();
    let mut caller = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("500")
        .set("rtp_port", caller_rtp.port())
        .set("hangup_after_ms", 3500)
        .spawn();
    connect(&mut caller, &mut callee, &caller_rtp, &callee_rtp);
    callee_rtp.send_silence(5);
    callee_rtp.send_rfc4733("5#", 101, 5);
    let caller_result = caller.wait();
    caller_result.assert_success(&server.log_tail());
    callee.wait().assert_success(&server.log_tail());
    let mut events: Vec<u8> = caller_rtp
        .packets()
        .iter()
        .filter(|p| p.pt == 101 && !p.payload.is_empty())
        .map(|p| p.payload[0])
        .collect();
    events.dedup();
    assert_eq!(
        events,
        vec![5, 11],
        "the caller should receive the callee's digits 5 and # as telephone-event (PT 101)\n{}",
        server.log_tail()
    );
    let cdr = server.cdr_for_call_id(&caller_result.call_id);
    assert_eq!(
        cdr.variables.get("callee_digits").map(String::as_str),
        Some("5#"),
        "{}",
        cdr_text(&cdr)
    );
}

#[test]
fn callee_digits_reach_a_caller_without_telephone_event_in_band() {
    let callee_rtp = RtpPeer::new();
    let mut callee = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("answer_delay_ms", 200)
        .set("hangup_after_ms", 3000)
        .spawn();
    callee.wait_listening();
    let server = bridge_server(callee.port());
    let caller_rtp = RtpPeer::new();
    let mut caller = Sipp::uac("uac_pcmu_only.xml", server.sip_addr())
        .service("500")
        .set("rtp_port", caller_rtp.port())
        .spawn();
    connect(&mut caller, &mut callee, &caller_rtp, &callee_rtp);
    callee_rtp.send_silence(5);
    callee_rtp.send_rfc4733("5", 101, 6);
    callee_rtp.send_silence(10);
    let caller_result = caller.wait();
    caller_result.assert_success(&server.log_tail());
    callee.wait().assert_success(&server.log_tail());
    let packets = caller_rtp.packets();
    assert!(
        packets.iter().all(|p| p.pt == 0),
        "a caller without telephone-event must get no PT 101 packets"
    );
    // The digit 5 is 770 Hz + 1336 Hz: find the 100 ms stretch where both are loudest.
    let pcm = pcm_of(&packets);
    let best = pcm
        .chunks(800)
        .map(|c| tone_amplitude(c, 770.0).min(tone_amplitude(c, 1336.0)))
        .fold(0.0, f64::max);
    let other = pcm
        .chunks(800)
        .map(|c| tone_amplitude(c, 697.0).max(tone_amplitude(c, 1477.0)))
        .fold(0.0, f64::max);
    assert!(
        best > 1000.0 && other < best / 4.0,
        "the caller should hear the digit 5 in band (770 + 1336 Hz): best {best:.0}, other \
         DTMF frequencies {other:.0}; {} packets\n{}",
        packets.len(),
        server.log_tail()
    );
    let cdr = server.cdr_for_call_id(&caller_result.call_id);
    assert_eq!(
        cdr.variables.get("callee_digits").map(String::as_str),
        Some("5"),
        "{}",
        cdr_text(&cdr)
    );
}
