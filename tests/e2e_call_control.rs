//! CALL_CONTROL end to end: SIPp places calls, a real web server in the test answers the
//! webhook and records every request. A three-loop dialogue (prompt + digits, a BRIDGE chosen
//! from the digits, `[]` back to the plan); one VALIDATION_ERRORS request for an invalid list;
//! a hanging, a 500, an HTML and a dead webhook each landing on the fallback within the
//! timeout; a server that never answers `[]` stopped by the loop limit; signatures checked.

mod common;

use common::http;
use common::webhook::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "s3cret-signing-key";

/// Tenant t1 (with prompts) and a signing secret.
fn signed_tenant() -> String {
    tenant_with_prompts().replacen(
        "customerNumber = 200002\n",
        &format!("customerNumber = 200002\nsigningSecret = \"{SECRET}\"\n"),
        1,
    )
}

fn cc_block(url: &str, extra: &str) -> String {
    format!(
        r#"{{ blockType = "CALL_CONTROL", url = "{url}", accessKey = "ak-123", variables = {{ campaign = "spring" }}{extra} }}"#
    )
}

/// Checks the fields every Call Control request carries.
fn assert_envelope(r: &HookRequest, loop_count: u64, status: &str) -> Value {
    let body = r.json();
    let ctx = format!("request body: {body}");
    assert_eq!(body["requestType"], "EXTERNAL_CALL_CONTROL", "{ctx}");
    assert_eq!(body["customerNumber"], 200002, "{ctx}");
    assert_eq!(body["accessKey"], "ak-123", "{ctx}");
    assert_eq!(body["loopCount"], loop_count, "{ctx}");
    assert_eq!(body["requestStatus"], status, "{ctx}");
    assert!(
        body["callControlUuid"]
            .as_str()
            .is_some_and(|u| u.len() == 36),
        "{ctx}"
    );
    let vars = &body["variables"];
    for v in [
        "call_uuid",
        "correlation_id",
        "caller_id_number",
        "destination_number",
        "call_start_time",
    ] {
        assert!(vars[v].is_string(), "variable {v} missing: {ctx}");
    }
    assert_eq!(vars["campaign"], "spring", "the block's variables: {ctx}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "content type"
    );
    assert_eq!(
        r.header("x-callplane-signature"),
        Some(hmac_sha256_hex(SECRET.as_bytes(), &r.body).as_str()),
        "X-Callplane-Signature must be the hex HMAC-SHA256 of the body"
    );
    body
}

#[test]
fn multi_loop_dialogue_collects_digits_bridges_and_hands_back_to_the_plan() {
    let mut busy = Sipp::uas("uas_busy.xml").spawn();
    busy.wait_listening();
    let hook = WebhookServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match body["loopCount"].as_u64() {
            Some(0) => HookReply::Json(json!({"blocks": [
                {"blockType": "ANNOUNCEMENT", "announcementName": "welcome"},
                {"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits", "variableName": "choice",
                 "minDigits": 1, "maxDigits": 1, "maxTries": 1, "timeout": 10}
            ]})),
            Some(1) => {
                // The destination is chosen from the digit: 2 = the sales trunk.
                let trunk = match body["variables"]["choice"].as_str() {
                    Some("2") => "sales",
                    _ => "nowhere",
                };
                HookReply::Json(json!({"blocks": [
                    {"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL", "destinations": [
                        {"destinationType": "SIP_TRUNK", "destination": trunk, "timeout": 10}]}
                ]}))
            }
            _ => HookReply::Json(json!({"blocks": []})),
        }
    });
    let prov = format!(
        "{}{}{}",
        signed_tenant(),
        trunk("sales", busy.port()),
        number_with_plan(
            "500",
            "cc",
            &format!(
                "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"NORMAL_CLEARING\" }},",
                cc_block(&hook.url("/cc"), ", timeout = 3000")
            )
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("500")
        .set("rtp_port", rtp.port())
        .spawn();

    // Loop 0 answered: the call is answered and the prompts play; key 2 once they do.
    hook.wait_for("/cc", 1, Duration::from_secs(10));
    rtp.wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            panic!(
                "the returned ANNOUNCEMENT should play: {e}\n{}",
                server.log_tail()
            )
        });
    // Digits count once COLLECT_DIGITS runs, after the welcome prompt.
    std::thread::sleep(prompt("welcome").duration() + Duration::from_millis(400));
    rtp.send_rfc4733("2", 101, 5);

    let reqs = hook.wait_for("/cc", 3, Duration::from_secs(20));
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let busy = busy.wait();
    busy.assert_success("the BRIDGE chosen by loop 1 should call the sales trunk");

    assert_eq!(reqs.len(), 3, "exactly three requests");
    let b0 = assert_envelope(&reqs[0], 0, "REQUESTING_BLOCKS");
    let b1 = assert_envelope(&reqs[1], 1, "REQUESTING_BLOCKS");
    let b2 = assert_envelope(&reqs[2], 2, "REQUESTING_BLOCKS");
    assert_eq!(b0["blocksProcessingResult"], Value::Null);
    assert_eq!(
        b0["callControlUuid"], b1["callControlUuid"],
        "one block instance"
    );
    assert_eq!(
        b1["callControlUuid"], b2["callControlUuid"],
        "one block instance"
    );
    assert!(b0["variables"].get("choice").is_none(), "{b0}");
    assert_eq!(
        b1["variables"]["choice"], "2",
        "the digit of loop 0 reaches loop 1: {b1}"
    );
    assert_eq!(b2["variables"]["bridge_result"], "busy", "{b2}");
    assert_eq!(b0["variables"]["destination_number"], "500");

    // `[]` handed back to the plan: its HANGUP ended the call.
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.variables.get("choice").map(String::as_str), Some("2"));
    assert_eq!(
        b0["variables"]["call_uuid"].as_str(),
        Some(cdr.call_id.as_str()),
        "call_uuid is the CDR's call id"
    );
}

#[test]
fn invalid_blocks_get_exactly_one_validation_errors_request_and_the_plan_goes_on() {
    let hook = WebhookServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if body["requestStatus"] == "VALIDATION_ERRORS" {
            // Whatever this says is ignored.
            return HookReply::Json(
                json!({"blocks": [{"blockType": "HANGUP", "hangupCause": "CALL_REJECTED"}]}),
            );
        }
        HookReply::Json(json!({"blocks": [
            {"blockType": "ANNOUNCEMENT", "announcementName": "welcome"},
            {"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits", "variableName": "pin",
             "minDigits": 1, "maxDigits": 40}
        ]}))
    });
    let prov = format!(
        "{}{}",
        signed_tenant(),
        number_with_plan(
            "501",
            "cc",
            &format!(
                "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"USER_BUSY\" }},",
                cc_block(&hook.url("/cc"), "")
            )
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("501")
        .set("rtp_port", rtp.port())
        .run();
    caller.assert_success(&server.log_tail());
    let finals = caller.final_responses("INVITE");
    assert_eq!(
        finals.first().and_then(|m| m.status()),
        Some(486),
        "nothing of the invalid list runs; the plan continues with HANGUP USER_BUSY\n{}",
        caller.report()
    );
    assert_eq!(
        rtp.packet_count(),
        0,
        "the invalid list's ANNOUNCEMENT must not run"
    );

    let reqs = hook.wait_for("/cc", 2, Duration::from_secs(5));
    // Give a stray third request the chance to show up.
    std::thread::sleep(Duration::from_millis(500));
    let reqs_after = hook.requests_to("/cc");
    assert_eq!(
        reqs_after.len(),
        2,
        "exactly one VALIDATION_ERRORS request follows"
    );
    assert_envelope(&reqs[0], 0, "REQUESTING_BLOCKS");
    let b = reqs[1].json();
    assert_eq!(b["requestStatus"], "VALIDATION_ERRORS", "{b}");
    assert_eq!(b["callControlUuid"], reqs[0].json()["callControlUuid"]);
    let errors: Vec<String> = b["blocksProcessingResult"]["validationErrors"]
        .as_array()
        .unwrap_or_else(|| panic!("validationErrors list: {b}"))
        .iter()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("block 1")
            && e.contains("COLLECT_DIGITS")
            && e.contains("maxDigits")),
        "the error names the block and the field: {errors:?}"
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_cause, "USER_BUSY", "{}", cdr_text(&cdr));
}

#[test]
fn broken_webhooks_land_on_the_fallback_within_the_timeout() {
    let hook = WebhookServer::start(|r| match r.path.as_str() {
        "/hang" => HookReply::Hang,
        "/err500" => HookReply::Raw(500, "application/json", "{\"error\":\"boom\"}".into()),
        "/html" => HookReply::Raw(
            200,
            "text/html",
            "<html><body>It works!</body></html>".into(),
        ),
        _ => HookReply::Raw(404, "text/plain", "no".into()),
    });
    // A port nobody listens on.
    let dead = format!("http://127.0.0.1:{}/cc", free_port());
    let timeout_ms = 1000u64;
    let mut prov = signed_tenant();
    prov.push_str(&number_with_plan(
        "699",
        "fallback",
        "  { blockType = \"HANGUP\", hangupCause = \"USER_BUSY\" },",
    ));
    let cases = [
        ("601", hook.url("/hang")),
        ("602", hook.url("/err500")),
        ("603", hook.url("/html")),
        ("604", dead),
    ];
    for (number, url) in &cases {
        prov.push_str(&number_with_plan(
            number,
            &format!("p{number}"),
            &format!(
                "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }},",
                cc_block(
                    url,
                    &format!(", timeout = {timeout_ms}, fallbackPlan = \"fallback\"")
                )
            ),
        ));
    }
    // Without a fallback plan a failure continues after the block.
    prov.push_str(&number_with_plan(
        "605",
        "p605",
        &format!(
            "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }},",
            cc_block(&hook.url("/err500"), ", timeout = 1000")
        ),
    ));
    let server = Server::start(&prov, true);
    for (number, expected) in [
        ("601", 486),
        ("602", 486),
        ("603", 486),
        ("604", 486),
        ("605", 603),
    ] {
        let (status, waited) = call_refused(&server, number);
        assert_eq!(
            status,
            expected,
            "number {number}: the webhook failure should lead to {expected}\n{}",
            server.log_tail()
        );
        assert!(
            waited < (timeout_ms as f64 / 1000.0) + 0.5,
            "number {number}: the caller waited {waited:.3} s for a decision; the timeout is {timeout_ms} ms"
        );
        if number == "601" {
            assert!(
                waited >= 0.9,
                "the hanging webhook is given its full timeout, not {waited:.3} s"
            );
        }
    }
    assert_eq!(hook.requests_to("/hang").len(), 1);
    // The failures are counted per tenant on /metrics.
    let metrics = http_get(server.http_port(), "/metrics");
    for outcome in ["timeout", "http_error", "invalid_answer", "connect_error"] {
        let line = format!(
            "callplane_webhook_requests_total{{tenant=\"t1\",kind=\"call_control\",outcome=\"{outcome}\"}}"
        );
        let count = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{line} missing from /metrics:\n{metrics}"));
        assert!(count >= 1, "{line} = {count}");
    }
}

#[test]
fn a_webhook_that_never_returns_an_empty_list_is_stopped_by_the_loop_limit() {
    let hook = WebhookServer::start(|_| {
        HookReply::Json(json!({"blocks": [{"blockType": "CALL_SETTINGS", "forwardAni": true}]}))
    });
    let prov = format!(
        "{}{}{}",
        signed_tenant(),
        number_with_plan(
            "700",
            "cc",
            &format!(
                "  {},\n  {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }},",
                cc_block(&hook.url("/cc"), ", fallbackPlan = \"stopped\"")
            )
        ),
        number_with_plan(
            "701",
            "stopped",
            "  { blockType = \"HANGUP\", hangupCause = \"USER_BUSY\" },"
        )
    );
    let server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: "callControlMaxLoops = 5\n".into(),
            ..ServerOptions::default()
        },
    );
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .run();
    caller.assert_success(&server.log_tail());
    assert_eq!(
        caller
            .final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(486),
        "after the loop limit the fallback plan runs\n{}",
        caller.report()
    );
    let loops: Vec<u64> = hook
        .requests_to("/cc")
        .iter()
        .map(|r| r.json()["loopCount"].as_u64().unwrap_or(999))
        .collect();
    assert_eq!(loops, vec![0, 1, 2, 3, 4], "five requests, then the limit");
}

#[test]
fn interrupt_stops_the_running_block_and_asks_the_webhook_at_once() {
    const KEY: &str = "cp_interrupt_test_admin_key_0123456789";
    let hook = WebhookServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match body["loopCount"].as_u64() {
            // A long collection: 60 s for a digit that never comes.
            Some(0) => HookReply::Json(json!({"blocks": [
                {"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits", "variableName": "x",
                 "minDigits": 1, "maxDigits": 1, "maxTries": 1, "timeout": 60},
                {"blockType": "HANGUP", "hangupCause": "CALL_REJECTED"}
            ]})),
            _ => HookReply::Json(
                json!({"blocks": [{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]}),
            ),
        }
    });
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}",
        signed_tenant(),
        number_with_plan(
            "710",
            "cc",
            &format!("  {},", cc_block(&hook.url("/cc"), ""))
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("710")
        .set("rtp_port", rtp.port())
        .spawn();
    let first = hook.wait_for("/cc", 1, Duration::from_secs(10));
    let call_id = first[0].json()["variables"]["call_uuid"]
        .as_str()
        .expect("call_uuid")
        .to_string();
    rtp.wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the prompt should play: {e}\n{}", server.log_tail()));

    // Without a key: refused; an unknown call: 404.
    let path = format!("/v1/calls/{call_id}/interrupt");
    let r = http::json(server.http_port(), "POST", &path, None, None);
    assert_eq!(r.status, 401, "{}", r.describe());
    let r = http::json(
        server.http_port(),
        "POST",
        "/v1/calls/00000000-0000-0000-0000-000000000000/interrupt",
        Some(KEY),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.describe());

    let r = http::json(server.http_port(), "POST", &path, Some(KEY), None);
    assert_eq!(r.status, 202, "{}", r.describe());
    let reqs = hook.wait_for("/cc", 2, Duration::from_secs(2));
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        waited < Duration::from_secs(10),
        "loop 1 must follow the interrupt, not the 60 s collection timeout ({waited:?})"
    );
    let b1 = assert_envelope(&reqs[1], 1, "REQUESTING_BLOCKS");
    assert_eq!(
        b1["variables"].get("x"),
        None,
        "the interrupted collection set nothing"
    );

    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.hangup_cause,
        "NORMAL_CLEARING",
        "loop 1's HANGUP ended the call, not the interrupted list's CALL_REJECTED\n{}",
        cdr_text(&cdr)
    );
    // The call is over: interrupting it now is a 409 saying it has ended.
    let r = http::json(server.http_port(), "POST", &path, Some(KEY), None);
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(r.text().contains("has ended"), "{}", r.describe());
}

/// A GET on the server's HTTP port; the body.
fn http_get(port: u16, path: &str) -> String {
    let r = http::request(port, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "GET {path}: {}", r.describe());
    r.text()
}
