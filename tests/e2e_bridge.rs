//! BRIDGE end to end with SIPp callees behind trunks: SEQUENTIAL gives up on a ringing
//! destination after its timeout (CANCEL) and connects the next one; PARALLEL cancels the
//! losers when one answers; audio flows both ways once bridged; who hung up lands in the CDR;
//! a bridge where nobody answers sets `bridge_result` and the plan goes on.

mod common;

use common::*;
use std::time::Duration;

fn bridged_plan(bridge: &str, after: &str) -> String {
    format!("  {bridge},\n  {after},")
}

/// The seconds between the first received INVITE and the first received CANCEL in a trace.
fn invite_to_cancel(r: &SippResult) -> Option<f64> {
    let invite = r.received_request("INVITE")?.time?;
    let cancel = r.received_request("CANCEL")?.time?;
    Some(cancel - invite)
}

#[test]
fn sequential_cancels_the_ringing_destination_and_connects_the_next() {
    let mut ringer = Sipp::uas("uas_ring_forever.xml").spawn();
    let callee_rtp = RtpPeer::new();
    let mut answerer = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("answer_delay_ms", 200)
        .set("hangup_after_ms", 4000)
        .spawn();
    ringer.wait_listening();
    answerer.wait_listening();
    let prov = format!(
        "{}{}{}{}",
        tenant_with_prompts(),
        trunk("slow", ringer.port()),
        trunk("fast", answerer.port()),
        number_with_plan(
            "300",
            "seq",
            &bridged_plan(
                r##"{ blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "slow", timeout = 2 }, { destinationType = "SIP_TRUNK", destination = "fast", timeout = 15 } ] }"##,
                r##"{ blockType = "HANGUP", hangupCause = "NO_ANSWER" }"##
            )
        )
    );
    let server = Server::start(&prov, true);
    let caller_rtp = RtpPeer::new();
    let mut caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("300")
        .set("rtp_port", caller_rtp.port())
        .spawn();

    // Answered through the second destination: find both media addresses of the server.
    let ok = caller.wait_for_message(
        "the 200 OK to the caller's INVITE",
        Duration::from_secs(15),
        |m| !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"),
    );
    let to_caller = sdp_audio_addr(ok.body()).expect("SDP in the 200 OK");
    let invite = answerer.wait_for_message(
        "the INVITE to the second destination",
        Duration::from_secs(5),
        |m| !m.sent && m.method() == Some("INVITE"),
    );
    let to_callee = sdp_audio_addr(invite.body()).expect("SDP offer in the outbound INVITE");
    caller_rtp.set_remote(to_caller);
    callee_rtp.set_remote(to_callee);

    // Audio both ways: the callee plays welcome, the caller plays invalid.
    let welcome = prompt("welcome");
    let invalid = prompt("invalid");
    let from_callee = caller_rtp.packet_count();
    let from_caller = callee_rtp.packet_count();
    std::thread::scope(|s| {
        s.spawn(|| callee_rtp.send_pcm(&welcome.samples));
        s.spawn(|| caller_rtp.send_pcm(&invalid.samples));
    });
    caller_rtp
        .wait_for_audio(&welcome.samples, from_callee, 0.9, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("caller should hear the callee: {e}\n{}", server.log_tail()));
    callee_rtp
        .wait_for_audio(&invalid.samples, from_caller, 0.9, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("callee should hear the caller: {e}\n{}", server.log_tail()));

    // The callee hangs up (4 s after answer): the server must end the caller's leg.
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let answerer = answerer.wait();
    answerer.assert_success(&server.log_tail());
    let ringer = ringer.wait();
    ringer.assert_success(&format!(
        "the first destination must be cancelled when its 2 s timeout ran out\n{}",
        server.log_tail()
    ));
    let waited = invite_to_cancel(&ringer).expect("INVITE and CANCEL timestamps");
    assert!(
        (1.5..5.0).contains(&waited),
        "the first destination's timeout is 2 s; CANCEL came {waited:.2} s after its INVITE"
    );
    assert!(
        caller
            .received_statuses()
            .iter()
            .any(|s| *s == 180 || *s == 183),
        "the caller should get ringing while the destinations ring\n{}",
        caller.report()
    );

    let cdr = server.cdr_for_call_id(&caller.call_id);
    let all = cdr_text(&cdr);
    assert_eq!(cdr.hangup_by, "callee", "{all}");
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{all}");
    assert!(cdr.answer_time.is_some(), "{all}");
    let out: Vec<_> = cdr
        .legs
        .iter()
        .filter(|l| l.direction == "outbound")
        .collect();
    assert_eq!(out.len(), 2, "two outbound legs: {all}");
    assert_eq!(out[0].destination, "slow", "{all}");
    assert!(out[0].answer_time.is_none(), "{all}");
    assert_eq!(
        out[0].hangup_cause, "NO_ANSWER",
        "the ringing destination timed out: {all}"
    );
    assert_eq!(out[1].destination, "fast", "{all}");
    assert!(out[1].answer_time.is_some(), "{all}");
    assert_eq!(out[1].sip_status, Some(200), "{all}");
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("answered"),
        "{all}"
    );
}

#[test]
fn parallel_cancels_the_losers_and_the_caller_hangs_up() {
    let mut ringer1 = Sipp::uas("uas_ring_forever.xml").spawn();
    let mut ringer2 = Sipp::uas("uas_ring_forever.xml").spawn();
    let callee_rtp = RtpPeer::new();
    let mut winner = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("answer_delay_ms", 800)
        .set("hangup_after_ms", 0)
        .spawn();
    ringer1.wait_listening();
    ringer2.wait_listening();
    winner.wait_listening();
    let prov = format!(
        "{}{}{}{}{}",
        tenant_with_prompts(),
        trunk("r1", ringer1.port()),
        trunk("r2", ringer2.port()),
        trunk("win", winner.port()),
        number_with_plan(
            "400",
            "par",
            &bridged_plan(
                r##"{ blockType = "BRIDGE", bridgeMode = "PARALLEL", blockTimeout = 15, destinations = [ { destinationType = "SIP_TRUNK", destination = "r1" }, { destinationType = "SIP_TRUNK", destination = "win" }, { destinationType = "SIP_TRUNK", destination = "r2" } ] }"##,
                r##"{ blockType = "HANGUP", hangupCause = "NO_ANSWER" }"##
            )
        )
    );
    let server = Server::start(&prov, true);
    let caller_rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("400")
        .set("rtp_port", caller_rtp.port())
        .set("hangup_after_ms", 1500)
        .run();
    caller.assert_success(&server.log_tail());
    let winner = winner.wait();
    winner.assert_success(&format!(
        "the answering destination should get the caller's BYE\n{}",
        server.log_tail()
    ));
    // All three were called at once: the losers got their INVITE before the winner answered.
    let answered_at = winner
        .sent()
        .find(|m| m.status() == Some(200))
        .and_then(|m| m.time)
        .expect("the winner's 200 with a timestamp");
    for (name, r) in [("r1", ringer1.wait()), ("r2", ringer2.wait())] {
        r.assert_success(&format!(
            "destination {name} must be cancelled when another one answered\n{}",
            server.log_tail()
        ));
        let invited = r
            .received_request("INVITE")
            .and_then(|m| m.time)
            .expect("INVITE");
        assert!(
            invited < answered_at,
            "PARALLEL: {name} should ring at the same time as the others, but its INVITE came \
             {:.2} s after the winner answered",
            invited - answered_at
        );
        let cancel = r.received_request("CANCEL").expect("CANCEL");
        let reason = cancel.header("Reason").unwrap_or_default();
        assert!(
            reason.contains("cause=200"),
            "a CANCEL because another destination answered should say so (RFC 3326 \
             Reason: SIP;cause=200;text=\"Call completed elsewhere\"), so phones do not log a \
             missed call; got {reason:?}"
        );
    }

    let cdr = server.cdr_for_call_id(&caller.call_id);
    let all = cdr_text(&cdr);
    assert_eq!(cdr.hangup_by, "caller", "{all}");
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{all}");
    let out: Vec<_> = cdr
        .legs
        .iter()
        .filter(|l| l.direction == "outbound")
        .collect();
    assert_eq!(out.len(), 3, "three outbound legs: {all}");
    for l in &out {
        if l.destination == "win" {
            assert!(l.answer_time.is_some(), "{all}");
            assert_eq!(l.sip_status, Some(200), "{all}");
        } else {
            assert!(l.answer_time.is_none(), "{all}");
            assert_eq!(
                l.hangup_cause, "ORIGINATOR_CANCEL",
                "a loser was cancelled: {all}"
            );
        }
    }
}

#[test]
fn nobody_answers_sets_bridge_result_and_the_plan_goes_on() {
    let mut busy = Sipp::uas("uas_busy.xml").spawn();
    let mut ringer = Sipp::uas("uas_ring_forever.xml").spawn();
    busy.wait_listening();
    ringer.wait_listening();
    // 500: EXTERNALNUMBER through the tenant's default trunk, which is busy.
    // 501: `number@trunk` to a destination that rings past its 1 s timeout.
    let prov = format!(
        "[[tenants]]\nname = \"t1\"\ncustomerNumber = 200002\ndefaultTrunk = \"busytrunk\"\n\n{}{}{}{}",
        trunk("busytrunk", busy.port()),
        trunk("ringtrunk", ringer.port()),
        number_with_plan(
            "500",
            "busy",
            &bridged_plan(
                r##"{ blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "EXTERNALNUMBER", destination = "+4922155400300", timeout = 10 } ] }"##,
                r##"{ blockType = "HANGUP", hangupCause = "USER_BUSY" }"##
            )
        ),
        number_with_plan(
            "501",
            "noanswer",
            &bridged_plan(
                r##"{ blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "777@ringtrunk", timeout = 1 } ] }"##,
                r##"{ blockType = "HANGUP", hangupCause = "NO_ANSWER" }"##
            )
        )
    );
    let server = Server::start(&prov, true);

    let rtp = RtpPeer::new();
    let c1 = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("500")
        .set("rtp_port", rtp.port())
        .run();
    c1.assert_success(&server.log_tail());
    assert_eq!(
        c1.final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(486),
        "after the busy bridge the plan's HANGUP USER_BUSY answers 486\n{}",
        c1.report()
    );
    let busy = busy.wait();
    busy.assert_success(&server.log_tail());
    let invite = busy
        .received_request("INVITE")
        .expect("INVITE at the default trunk");
    assert!(
        invite.first_line().contains("+4922155400300@"),
        "EXTERNALNUMBER must be the Request-URI user at the default trunk: {}",
        invite.first_line()
    );
    let cdr = server.cdr_for_call_id(&c1.call_id);
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("busy"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "USER_BUSY");
    assert_eq!(cdr.sip_status, Some(486));

    let c2 = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("501")
        .set("rtp_port", rtp.port())
        .run();
    c2.assert_success(&server.log_tail());
    assert_eq!(
        c2.final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(480),
        "after the unanswered bridge the plan's HANGUP NO_ANSWER answers 480\n{}",
        c2.report()
    );
    let ringer = ringer.wait();
    ringer.assert_success(&server.log_tail());
    let invite = ringer
        .received_request("INVITE")
        .expect("INVITE at the ringing trunk");
    assert!(
        invite.first_line().starts_with("INVITE sip:777@"),
        "`777@ringtrunk` must call user 777 at that trunk: {}",
        invite.first_line()
    );
    let cdr = server.cdr_for_call_id(&c2.call_id);
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("no_answer"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "NO_ANSWER");
}
