//! Block lists in the shapes TENIOS's own example servers, client libraries and voice-bot apps
//! send — the lenient parts included — are accepted by `callplane plan validate` and run in real
//! calls: SEQUENTIAL destinations without `timeout`, a bare HANGUP, `forwardAni` as a number,
//! a SIP_USER written as a SIP URI, COLLECT_SPEECH without an announcement, numbers and booleans
//! as strings, and the variables TENIOS sends (`answered_time`, `collected_<variableName>`).

mod common;

use common::webhook::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str =
    "[[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"secret\"\n\n";

/// Every compatibility rule in one list, as the clients write them.
fn tenios_shaped_blocks() -> Value {
    json!([
        {"blockType": "CALL_SETTINGS", "forwardAni": "+4930999000"},
        {"blockType": "CALL_SETTINGS", "forwardAni": "true"},
        // tenios-api-examples (PHP): SEQUENTIAL destinations without a timeout.
        {"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL", "destinations": [
            {"destinationType": "SIP_USER", "destination": "sip:alice@pbx.example.com"},
            {"destinationType": "SIP_USER", "destination": "1004"}]},
        {"blockType": "BRIDGE", "blockTimeout": "50", "bridgeMode": "PARALLEL", "destinations": [
            {"destination": "1001", "destinationType": "SIP_USER"},
            {"destination": "+4978787878", "destinationType": "EXTERNALNUMBER"}]},
        {"blockType": "ANNOUNCEMENT", "announcementName": "welcome"},
        {"blockType": "SAY", "voiceName": "de.female.2", "useSsml": false, "text": "Hallo"},
        {"blockType": "COLLECT_DIGITS", "standardAnnouncement": false, "announcementName": "enter-digits",
         "standardErrorAnnouncement": false, "errorAnnouncementName": "invalid",
         "variableName": "user_input", "minDigits": 1, "maxDigits": 1, "terminator": "#",
         "maxTries": 2, "timeout": 10, "allowSpeechInput": true, "asrProvider": "GOOGLE",
         "language": "de-DE"},
        // A voice-bot app: no announcement at all.
        {"blockType": "COLLECT_SPEECH", "asrProvider": "GOOGLE", "language": "de-DE",
         "variableName": "user_input", "maxTries": 2, "timeout": 10},
        {"blockType": "HANGUP"}
    ])
}

#[test]
fn plan_validate_accepts_tenios_shaped_block_lists() {
    let (ok, text) = plan_validate(&tenios_shaped_blocks());
    assert!(ok, "a TENIOS-shaped list must validate: {text}");

    // Leniency has limits: a wrong value still names block index and field.
    let mut bad = tenios_shaped_blocks();
    bad[2]["destinations"][0]["timeout"] = json!("soon");
    bad[8]["hangupCause"] = json!("LATER");
    let (ok, text) = plan_validate(&bad);
    assert!(!ok, "{text}");
    assert!(
        text.contains("block 2 (BRIDGE): field 'destinations[0].timeout'"),
        "{text}"
    );
    assert!(
        text.contains("block 8 (HANGUP): field 'hangupCause'"),
        "{text}"
    );
}

#[test]
fn tenios_shaped_answers_run_and_the_variables_are_named_as_tenios_names_them() {
    let hook = WebhookServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match body["loopCount"].as_u64() {
            // Numbers and booleans as strings, speech allowed (digits still count).
            Some(0) => HookReply::Json(json!({"blocks": [
                {"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits",
                 "variableName": "user_input", "minDigits": "1", "maxDigits": "3",
                 "terminator": "#", "maxTries": "1", "timeout": "8",
                 "allowSpeechInput": "true", "language": "de-DE", "asrProvider": "GOOGLE"}
            ]})),
            // A bare HANGUP: a normal clearing.
            _ => HookReply::Json(json!({"blocks": [{"blockType": "HANGUP"}]})),
        }
    });
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "500",
            "cc",
            &format!(
                "  {{ blockType = \"CALL_CONTROL\", url = \"{}\" }},\n  {{ blockType = \"HANGUP\", hangupCause = \"USER_BUSY\" }},",
                hook.url("/cc")
            )
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("500")
        .set("rtp_port", rtp.port())
        .spawn();
    let first = hook.wait_for("/cc", 1, Duration::from_secs(10));
    rtp.wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the prompt should play: {e}\n{}", server.log_tail()));
    rtp.send_rfc4733("42#", 101, 5);
    let reqs = hook.wait_for("/cc", 2, Duration::from_secs(20));
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());

    let v0 = &first[0].json()["variables"];
    let v1 = &reqs[1].json()["variables"];
    // Answered for the prompt of loop 0 only after the request: "0" before, then a time.
    assert_eq!(v0["answered_time"], "0", "before the answer: {v0}");
    let answered: u64 = v1["answered_time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("answered_time must be a number: {v1}"));
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    assert!(
        answered <= now_us && now_us - answered < 60_000_000,
        "answered_time is microseconds since the epoch, within the last minute: {answered}"
    );
    assert_eq!(v1["user_input"], "42", "{v1}");
    assert_eq!(v1["collected_user_input"], "42", "{v1}");
    assert_eq!(
        reqs[1].json()["requestStatus"],
        "REQUESTING_BLOCKS",
        "no validation errors"
    );

    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
}

#[test]
fn a_sip_uri_destination_without_timeout_rings_the_user_presenting_the_forward_ani_number() {
    let prov = format!(
        "{}{ALICE}{}",
        tenant_with_prompts(),
        number_with_plan(
            "600",
            "plan",
            r#"  { blockType = "CALL_SETTINGS", forwardAni = "+4930999000" },
  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_USER", destination = "sip:alice@pbx.example.com" } ] },
  { blockType = "HANGUP" },"#
        )
    );
    let server = Server::start(&prov, true);
    let phone_rtp = RtpPeer::new();
    let phone = registered_phone(&server, "alice", "secret", phone_rtp.port(), 5000);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("600")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", 1000)
        .run();
    caller.assert_success(&server.log_tail());
    let phone = phone.wait();
    phone.assert_success(&server.log_tail());
    let invite = phone
        .received_request("INVITE")
        .unwrap_or_else(|| panic!("alice got no INVITE\n{}", server.log_tail()));
    let from = invite.header("From").unwrap_or_default();
    assert!(
        from.contains("sip:+4930999000@"),
        "forwardAni's number is presented: {from}"
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    let leg = cdr
        .legs
        .iter()
        .find(|l| l.direction == "outbound")
        .unwrap_or_else(|| panic!("no outbound leg: {}", cdr_text(&cdr)));
    assert_eq!(leg.destination, "alice", "{}", cdr_text(&cdr));
    assert!(leg.answer_time.is_some(), "{}", cdr_text(&cdr));
}
