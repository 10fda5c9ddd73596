//! The REFER block against SIPp trunk callers: one that accepts the REFER (202) and reports the
//! transfer done (NOTIFY with sipfrag 200) — our part ends with BYE and a CDR saying it was
//! referred —, one that accepts but reports a failure (NOTIFY 486), and one that refuses the
//! REFER (603): both continue the plan with `refer_result` set.

mod common;

use common::*;

/// Number 700: REFER to a number, then (if the plan goes on) HANGUP CALL_REJECTED.
fn refer_server() -> Server {
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "700",
            "refer",
            r#"  { blockType = "REFER", destination = "+4930123456" },
  { blockType = "HANGUP", hangupCause = "CALL_REJECTED" },"#
        )
    );
    Server::start(&prov, true)
}

#[test]
fn an_accepted_and_completed_refer_ends_our_part_as_referred() {
    let server = refer_server();
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_refer_accept.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .set("notify_status", 200)
        .run();
    caller.assert_success(&server.log_tail());
    let refer = caller
        .received_request("REFER")
        .unwrap_or_else(|| panic!("no REFER\n{}", caller.report()));
    let refer_to = refer.header("Refer-To").unwrap_or_default();
    assert!(
        refer_to.contains("sip:+4930123456@127.0.0.1"),
        "Refer-To names the number at the trunk's host: {refer_to}"
    );
    // Our BYE comes after the final NOTIFY, not before.
    let bye = caller
        .received_request("BYE")
        .unwrap_or_else(|| panic!("no BYE\n{}", caller.report()));
    assert!(
        bye.header("Reason").is_some_and(|r| r.contains("cause=16")),
        "{bye:?}"
    );

    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_by, "referred", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    let leg = cdr
        .legs
        .iter()
        .find(|l| l.direction == "refer")
        .unwrap_or_else(|| panic!("no refer leg: {}", cdr_text(&cdr)));
    assert_eq!(leg.destination, "+4930123456");
    assert_eq!(leg.sip_status, Some(200));
    assert_eq!(
        cdr.variables.get("refer_result"),
        None,
        "{}",
        cdr_text(&cdr)
    );
}

#[test]
fn a_refer_that_fails_or_is_refused_continues_the_plan_with_refer_result() {
    let server = refer_server();

    // Accepted, then the transfer target was busy.
    let rtp = RtpPeer::new();
    let failed = Sipp::uac("uac_refer_accept.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .set("notify_status", 486)
        .run();
    failed.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&failed.call_id);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    assert_eq!(
        cdr.variables.get("refer_result").map(String::as_str),
        Some("failed"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(
        cdr.variables.get("refer_status").map(String::as_str),
        Some("486")
    );

    // Refused outright.
    let rtp = RtpPeer::new();
    let refused = Sipp::uac("uac_refer_refuse.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .run();
    refused.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&refused.call_id);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "system", "{}", cdr_text(&cdr));
    assert_eq!(
        cdr.variables.get("refer_result").map(String::as_str),
        Some("rejected"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(
        cdr.variables.get("refer_status").map(String::as_str),
        Some("603")
    );
    assert!(
        cdr.legs.iter().all(|l| l.direction != "refer"),
        "{}",
        cdr_text(&cdr)
    );
}
