//! The TENIOS side APIs with TENIOS-style payloads: `POST /makecall/init` calls a number (a SIPp
//! trunk) and, once it answers, runs the TENIOS number's routing plan — here a Call Control
//! block whose webhook sees `callback_id` and `callback_bleg_uuid`; `POST /makecall/status`
//! follows it (also across a restart); `POST /interrupt-ecc-block` stops the running Call
//! Control block so the next webhook request goes out at once.

mod common;

use common::webhook::{HookReply, WebhookServer};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "cp_tenios_e2e_customer_key_012345";

fn post(server: &Server, path: &str, body: Value) -> http::HttpResponse {
    http::json(server.http_port(), "POST", path, None, Some(&body))
}

fn status(server: &Server, id: &Value) -> String {
    let r = post(
        server,
        "/makecall/status",
        json!({"access_key": ACCESS_KEY, "id": id}),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    r.json()["status"].as_str().unwrap_or_default().to_string()
}

fn wait_status(server: &Server, id: &Value, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(server, id);
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "status {s}, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn makecall_runs_the_numbers_plan_and_interrupt_ecc_block_moves_it_on() {
    let hook = WebhookServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match body["loopCount"].as_u64() {
            Some(0) => HookReply::Json(json!({"blocks": [
                {"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits", "variableName": "x",
                 "minDigits": 1, "maxDigits": 1, "maxTries": 1, "timeout": 60}
            ]})),
            _ => HookReply::Json(
                json!({"blocks": [{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]}),
            ),
        }
    });
    let dest_rtp = RtpPeer::new();
    let mut destination = Sipp::uas("uas_answer.xml")
        .set("rtp_port", dest_rtp.port())
        .set("answer_delay_ms", 300)
        .set("hangup_after_ms", 0)
        .timeout_s(40)
        .spawn();
    destination.wait_listening();
    let prov = format!(
        "[[apiKeys]]\nname = \"app\"\nrealm = \"customer\"\ntenant = \"t1\"\nkey = \"{ACCESS_KEY}\"\n\n{}{}{}",
        tenant_with_prompts().replacen(
            "customerNumber = 200002\n",
            "customerNumber = 200002\ndefaultTrunk = \"carrier\"\n",
            1
        ),
        trunk("carrier", destination.port()),
        number_with_plan(
            "+4922155400300",
            "cc",
            &format!(
                "  {{ blockType = \"CALL_CONTROL\", url = \"{}\", accessKey = \"ak-1\" }},",
                hook.url("/cc")
            )
        )
    );
    let server = Server::start(&prov, true);

    // Errors first, in TENIOS's shape.
    let r = post(
        &server,
        "/makecall/init",
        json!({"access_key": "wrong-key-0000000000", "destination_number": "+4930123", "tenios_number": "+4922155400300"}),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.json()["error_code"],
        "BAD_CREDENTIALS",
        "{}",
        r.describe()
    );
    let r = post(
        &server,
        "/makecall/init",
        json!({"access_key": ACCESS_KEY, "destination_number": "+4930123", "tenios_number": "+49999"}),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.json()["fields"], json!(["tenios_number"]));
    let r = post(
        &server,
        "/makecall/status",
        json!({"access_key": ACCESS_KEY, "id": 4242}),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = post(
        &server,
        "/interrupt-ecc-block",
        json!({"access_key": ACCESS_KEY, "call_uuid": "00000000-0000-0000-0000-000000000000"}),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.json()["success"], false, "{}", r.describe());
    assert!(r.json()["error_code"].is_string(), "{}", r.describe());

    let r = post(
        &server,
        "/makecall/init",
        json!({"access_key": ACCESS_KEY, "destination_number": "+4930123", "tenios_number": "+4922155400300"}),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.describe(), server.log_tail());
    let id = r.json()["id"].clone();
    assert!(
        id.is_u64(),
        "the id is a number, as TENIOS answers it: {id}"
    );

    let invite = destination.wait_for_message("the INVITE", Duration::from_secs(10), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    assert!(
        invite.first_line().starts_with("INVITE sip:+4930123@"),
        "{}",
        invite.first_line()
    );
    // The TENIOS number is the caller ID by default.
    let from = invite.header("From").unwrap_or_default();
    assert!(from.contains("sip:+4922155400300@"), "From: {from}");

    let first = hook.wait_for("/cc", 1, Duration::from_secs(10));
    let vars = &first[0].json()["variables"];
    assert_eq!(vars["callback_id"], id.to_string(), "{vars}");
    let call_uuid = vars["call_uuid"].as_str().expect("call_uuid").to_string();
    assert_eq!(vars["callback_bleg_uuid"], call_uuid.as_str(), "{vars}");
    wait_status(&server, &id, "CONNECTED");
    // The collection's prompt plays: the block is running.
    dest_rtp
        .wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the prompt should play: {e}\n{}", server.log_tail()));

    let r = post(
        &server,
        "/interrupt-ecc-block",
        json!({"access_key": ACCESS_KEY, "call_uuid": call_uuid}),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json(), json!({"success": true}));
    let reqs = hook.wait_for("/cc", 2, Duration::from_secs(3));
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(waited < Duration::from_secs(10), "{waited:?}");

    destination.wait().assert_success(&server.log_tail());
    wait_status(&server, &id, "DISCONNECTED");
    let cdr = server.wait_for_cdr("the makecall's CDR", {
        let c = call_uuid.clone();
        move |cdr| cdr.call_id == c
    });
    assert_eq!(cdr.number, "+4922155400300", "{}", cdr_text(&cdr));
    assert_eq!(
        cdr.variables.get("callback_id").map(String::as_str),
        Some(id.to_string().as_str())
    );

    // After a restart the request is still known (its state from the CDR), and the next
    // request gets a new id, not one handed out before.
    let mut server = server;
    server.restart();
    assert_eq!(status(&server, &id), "DISCONNECTED");
    let r = post(
        &server,
        "/makecall/init",
        json!({"access_key": ACCESS_KEY, "destination_number": "+4930124", "tenios_number": "+4922155400300"}),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let next = r.json()["id"].as_u64().expect("an id");
    assert!(next > id.as_u64().unwrap_or(u64::MAX), "{next} after {id}");
    // The new request has its own state; the old one keeps its own.
    let s = status(&server, &json!(next));
    assert!(s == "REQUESTED" || s == "CALLING_A", "{s}");
    assert_eq!(status(&server, &id), "DISCONNECTED");
}
