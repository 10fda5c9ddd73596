//! Shutting the switch down loses nothing: a call in progress at SIGTERM is ended with a BYE
//! carrying `Reason: Q.850;cause=41` (NORMAL_TEMPORARY_FAILURE) and leaves its CDR before the
//! process exits.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn sigterm_ends_calls_in_progress_and_writes_their_cdrs() {
    // ~10 s of prompts: the call is certainly still up when the signal arrives.
    let blocks = r##"  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##;
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan("100", "long", blocks)
    );
    let mut server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(10, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the call did not come up: {e}\n{}", server.log_tail()));

    let status = server.stop().expect("an exit status");
    assert!(
        status.success(),
        "SIGTERM with a call up should still exit 0, got {status:?}\n{}",
        server.log_tail()
    );

    let sipp = caller.wait();
    sipp.assert_success(&server.log_tail());
    let bye = sipp
        .received_request("BYE")
        .unwrap_or_else(|| panic!("the caller got no BYE at shutdown\n{}", sipp.report()));
    let reason = bye.header("Reason").unwrap_or_default();
    assert!(
        reason.starts_with("Q.850") && reason.contains("cause=41"),
        "the shutdown BYE should carry Reason Q.850 cause 41, got {reason:?}\n{}",
        bye.text
    );

    // The CDR was written before the process exited (the file outlives the process).
    let cdrs = read_cdrs(&server.db()).expect("read CDRs");
    let cdr = cdrs.iter().find(|c| c.number == "100").unwrap_or_else(|| {
        panic!(
            "no CDR for the call ended by shutdown:\n{}",
            format_cdrs(&cdrs)
        )
    });
    assert_eq!(
        cdr.hangup_cause,
        "NORMAL_TEMPORARY_FAILURE",
        "{}",
        cdr_text(cdr)
    );
    assert_eq!(cdr.hangup_by, "system", "{}", cdr_text(cdr));
    assert!(cdr.answer_time.is_some(), "{}", cdr_text(cdr));
}
