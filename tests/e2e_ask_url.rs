//! ASK_URL end to end (Enswitch "Ask web URL"): the form fields posted, `\r\n` and `\n`
//! answers, routing to a number through the tenant's default trunk, `answer_url` and
//! `hangup_url` per leg with durations and status for answered, busy and unanswered legs, and
//! the timeout destination for a server that hangs or fails.

mod common;

use common::webhook::*;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// Tenant t1 (with prompts) whose EXTERNALNUMBER calls go out through trunk `gw`.
fn tenant_with_gateway(gw_port: u16) -> String {
    format!(
        "{}{}",
        tenant_with_prompts().replacen(
            "customerNumber = 200002\n",
            "customerNumber = 200002\ndefaultTrunk = \"gw\"\n",
            1
        ),
        trunk("gw", gw_port)
    )
}

fn ask_block(url: &str, extra: &str) -> String {
    format!(r#"{{ blockType = "ASK_URL", url = "{url}"{extra} }}"#)
}

fn field<'a>(form: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    form.get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("form field {name} missing: {form:?}"))
}

fn secs(form: &BTreeMap<String, String>, name: &str) -> u64 {
    field(form, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a whole number of seconds: {form:?}"))
}

#[test]
fn fields_crlf_answer_and_leg_urls_of_an_answered_leg() {
    let callee_rtp = RtpPeer::new();
    let mut callee = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("answer_delay_ms", 300)
        .set("hangup_after_ms", 2000)
        .spawn();
    callee.wait_listening();
    let hook = WebhookServer::start(|r| match r.path.as_str() {
        "/ask" => HookReply::text(
            "dtype: external\r\ndnumber: 4930123\r\nhangup_url: HOOK/hangup\r\n"
                .replace(
                    "HOOK",
                    &format!("http://{}", r.header("host").unwrap_or("")),
                )
                .as_str(),
        ),
        _ => HookReply::text("ignored"),
    });
    let plan = format!(
        "  {{ blockType = \"COLLECT_DIGITS\", announcementName = \"enter-digits\", variableName = \"ext\", minDigits = 1, maxDigits = 4, terminator = \"#\", maxTries = 1, timeout = 10 }},\n  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }},",
        ask_block(
            &hook.url("/ask"),
            &format!(
                ", timeout = 3, answerUrl = \"{}\", hangupUrl = \"{}\"",
                hook.url("/answer"),
                hook.url("/block-hangup")
            )
        )
    );
    let prov = format!(
        "{}{}",
        tenant_with_gateway(callee.port()),
        number_with_plan("800", "ask", &plan)
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("800")
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the prompt should play: {e}\n{}", server.log_tail()));
    rtp.send_rfc4733("42#", 101, 5);

    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let callee = callee.wait();
    callee.assert_success("the number from the answer is called through the default trunk");
    let invite = callee
        .received_request("INVITE")
        .expect("INVITE at the gateway");
    assert!(
        invite.first_line().contains("4930123"),
        "dnumber is dialled: {}",
        invite.first_line()
    );

    let cdr = server.cdr_for_call_id(&caller.call_id);
    let ask = hook.wait_for("/ask", 1, Duration::from_secs(2));
    assert_eq!(ask.len(), 1);
    assert_eq!(
        ask[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = ask[0].form();
    for (name, want) in [
        ("scustomer", "200002"),
        ("dcustomer", "200002"),
        ("stype", "external"),
        ("snumber", "sipp"),
        ("ctype", ""),
        ("cnumber", "800"),
        ("dtype", "number"),
        ("dnumber", "800"),
        ("state", "ring"),
        ("patternmenu_digits", "42"),
    ] {
        assert_eq!(field(&form, name), want, "field {name}: {form:?}");
    }
    assert_eq!(
        field(&form, "callid"),
        caller.call_id,
        "callid is the SIP Call-ID"
    );
    assert_eq!(
        field(&form, "uniqueid"),
        cdr.call_id,
        "uniqueid is the call's id"
    );
    assert!(!field(&form, "server").is_empty());

    // answer_url from the block, hangup_url overridden by the answer.
    let answered = hook.wait_for("/answer", 1, Duration::from_secs(5));
    assert_eq!(answered.len(), 1, "answer_url once for the one leg");
    assert_eq!(field(&answered[0].form(), "state"), "answer");
    let hung = hook.wait_for("/hangup", 1, Duration::from_secs(5));
    assert_eq!(hung.len(), 1, "hangup_url once for the one leg");
    let h = hung[0].form();
    assert_eq!(field(&h, "state"), "hangup");
    assert_eq!(field(&h, "status"), "answer");
    assert_eq!(field(&h, "recording"), "");
    let talk = secs(&h, "talktime");
    let total = secs(&h, "totaltime");
    assert!(
        (1..=3).contains(&talk),
        "the callee talked ~2 s: talktime {talk}"
    );
    assert!(
        total >= talk,
        "totaltime {total} includes the talk time {talk}"
    );
    assert!(
        hook.requests_to("/block-hangup").is_empty(),
        "the answer's hangup_url replaces the block's"
    );
    assert_eq!(cdr.hangup_by, "callee", "{}", cdr_text(&cdr));
}

/// One ASK_URL call whose answer sends it to the gateway, and what its hangup_url received.
fn leg_outcome(callee: &mut SippProcess, ring_timeout: u32) -> (BTreeMap<String, String>, usize) {
    callee.wait_listening();
    let hook = WebhookServer::start(|r| match r.path.as_str() {
        "/ask" => HookReply::text("dtype: external\r\ndnumber: 4930999\r\n"),
        _ => HookReply::text(""),
    });
    let plan = format!(
        "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"USER_BUSY\" }},",
        ask_block(
            &hook.url("/ask"),
            &format!(
                ", answerUrl = \"{}\", hangupUrl = \"{}\"",
                hook.url("/answer"),
                hook.url("/hangup")
            )
        )
    );
    let prov = format!(
        "{}{}",
        tenant_with_gateway(callee.port()),
        number_with_plan("801", "ask", &plan)
    );
    let server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: format!("askUrlRingTimeout = {ring_timeout}\n"),
            ..ServerOptions::default()
        },
    );
    let (status, _) = call_refused(&server, "801");
    assert_eq!(
        status,
        486,
        "the leg failed, so the plan continues with HANGUP USER_BUSY\n{}",
        server.log_tail()
    );
    let hung = hook.wait_for("/hangup", 1, Duration::from_secs(5));
    assert_eq!(hung.len(), 1, "hangup_url once for the one leg");
    (hung[0].form(), hook.requests_to("/answer").len())
}

#[test]
fn a_busy_leg_reports_busy_and_no_talk_time() {
    let mut callee = Sipp::uas("uas_busy.xml").spawn();
    let (h, answers) = leg_outcome(&mut callee, 30);
    callee.wait().assert_success("the gateway was called");
    assert_eq!(field(&h, "status"), "busy", "{h:?}");
    assert_eq!(secs(&h, "talktime"), 0);
    assert_eq!(
        answers, 0,
        "answer_url is not called for a leg that never answered"
    );
}

#[test]
fn an_unanswered_leg_reports_noanswer_after_the_ring_time() {
    let mut callee = Sipp::uas("uas_ring_forever.xml").spawn();
    let (h, answers) = leg_outcome(&mut callee, 2);
    callee
        .wait()
        .assert_success("the ringing leg must be cancelled when the ring time runs out");
    assert_eq!(field(&h, "status"), "noanswer", "{h:?}");
    assert_eq!(secs(&h, "talktime"), 0);
    let total = secs(&h, "totaltime");
    assert!(
        (2..=3).contains(&total),
        "rang for the 2 s ring time: totaltime {total}"
    );
    assert_eq!(answers, 0);
}

#[test]
fn timeouts_and_errors_go_to_the_timeout_destination() {
    let hook = WebhookServer::start(|r| match r.path.as_str() {
        "/hang" => HookReply::Hang,
        "/err" => HookReply::Raw(503, "text/plain", "down".into()),
        "/lf" => HookReply::text("dtype: plan\ndnumber: night\n"),
        _ => HookReply::text(""),
    });
    let mut prov = tenant_with_prompts();
    prov.push_str(&number_with_plan(
        "899",
        "night",
        "  { blockType = \"HANGUP\", hangupCause = \"USER_BUSY\" },",
    ));
    for (number, path, dest) in [
        ("810", "/hang", "\"night\""),
        ("811", "/err", "\"night\""),
        ("812", "/lf", "{ dtype = \"hangup\" }"),
        ("813", "/hang", "{ dtype = \"hangup\" }"),
    ] {
        prov.push_str(&number_with_plan(
            number,
            &format!("p{number}"),
            &format!(
                "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }},",
                ask_block(
                    &hook.url(path),
                    &format!(", timeout = 1, timeoutDestination = {dest}")
                )
            ),
        ));
    }
    let server = Server::start(&prov, true);
    // 810: hangs → plan night (486); 811: 503 → night (486); 812: `\n` answer naming plan
    // night (486); 813: hangs → hang up (NORMAL_CLEARING before answer: 480).
    for (number, expected) in [("810", 486), ("811", 486), ("812", 486), ("813", 480)] {
        let (status, waited) = call_refused(&server, number);
        assert_eq!(status, expected, "number {number}\n{}", server.log_tail());
        assert!(
            waited < 1.5,
            "number {number}: routed after {waited:.3} s; the timeout is 1 s (DNS included)"
        );
    }
}
