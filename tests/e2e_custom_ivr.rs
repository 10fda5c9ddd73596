//! A custom IVR over the API, against the real binary: an application subscribes to a number
//! with `"control": true` on the events socket, is offered a SIPp caller's inbound call
//! (`call.offered`, the caller hears ringing), claims it (the first claim wins), answers it,
//! runs a COLLECT_DIGITS block on it and gets the digits the caller keyed (RFC 4733) as an
//! event and in the call's variables, then bridges it. A call nobody claims runs its plan once
//! the offer times out. A call claimed through a socket whose session then ends goes back to
//! its plan.

mod common;

use common::ws::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ADMIN: &str = "cp_ivr_e2e_admin_key_0123456789";
const APP: &str = "cp_ivr_e2e_app_key_012345678901";

fn post(server: &Server, path: &str, key: &str, body: Option<Value>) -> http::HttpResponse {
    http::json(server.http_port(), "POST", path, Some(key), body.as_ref())
}

/// The next event of `kind` on the socket (other messages are skipped).
fn next_event(ws: &mut Ws, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Some(v) = next_json(ws) else { break };
        if v["type"] == kind {
            return v;
        }
    }
    panic!("no {kind} event");
}

/// The reply to a command sent with `id`.
fn command(ws: &mut Ws, id: &str, method: &str, params: Value) -> Value {
    send(
        ws,
        json!({"op": "command", "id": id, "method": method, "params": params}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some(v) = next_json(ws) else { break };
        if v["type"] == "reply" && v["id"] == id {
            return v;
        }
    }
    panic!("no reply to {method}");
}

#[test]
fn an_application_claims_answers_collects_digits_and_bridges_an_inbound_call() {
    let (mut target, target_rtp) = reinvited_callee(200);
    let mut prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN}\"\n\n\
         [[apiKeys]]\nname = \"ivr-app\"\nrealm = \"customer\"\ntenant = \"t1\"\nkey = \"{APP}\"\n\n"
    );
    prov.push_str(&tenant_with_prompts());
    prov.push_str(&trunk("target", target.port()));
    prov.push_str(&number_with_plan(
        "800",
        "fallback",
        r##"  { blockType = "HANGUP", hangupCause = "CALL_REJECTED" },"##,
    ));
    let server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: "offerTimeout = 1.5\n".into(),
            ..ServerOptions::default()
        },
    );
    let (mut app, _) = connect(&server, &format!("token={APP}"));
    // Control needs numbers, each in the key's scope.
    send(&mut app, json!({"op": "subscribe", "control": true}));
    let e = next_json(&mut app).expect("reply");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["field"], "numbers", "{e}");
    send(
        &mut app,
        json!({"op": "subscribe", "numbers": ["999"], "control": true}),
    );
    let e = next_json(&mut app).expect("reply");
    assert_eq!(e["type"], "error", "{e}");
    send(
        &mut app,
        json!({"op": "subscribe", "numbers": ["800"], "control": true}),
    );
    let r = next_json(&mut app).expect("subscribed");
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["control"], true, "{r}");
    let (mut other, _) = connect(&server, &format!("token={ADMIN}"));
    subscribe(&mut other, json!({"op": "subscribe"}));

    let (mut caller, caller_rtp) = reinvited_caller(&server, "800");
    let offered = next_event(&mut app, "call.offered");
    let id = offered["callId"].as_str().expect("callId").to_string();
    assert_eq!(offered["data"]["number"], "800", "{offered}");
    caller.wait_for_message("180 Ringing while offered", Duration::from_secs(5), |m| {
        !m.sent && m.status() == Some(180)
    });
    // Not claimed yet: nothing to answer, no blocks to run.
    let r = post(&server, &format!("/v1/calls/{id}/answer"), APP, None);
    assert_eq!(r.status, 409, "{}", r.describe());
    let reply = command(&mut app, "claim-1", "calls.claim", json!({"callId": id}));
    assert_eq!(reply["ok"], true, "{reply}");
    // The first claim won; another application's is refused.
    let late = command(&mut other, "claim-2", "calls.claim", json!({"callId": id}));
    assert_eq!(late["status"], 409, "{late}");
    let claimed = next_event(&mut app, "call.claimed");
    assert_eq!(claimed["data"]["by"], "ivr-app", "{claimed}");

    let r = post(&server, &format!("/v1/calls/{id}/answer"), APP, None);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["state"], "answered", "{}", r.describe());
    let r = post(&server, &format!("/v1/calls/{id}/answer"), APP, None);
    assert_eq!(r.status, 409, "answered already: {}", r.describe());
    let ok = caller.wait_for_message("the 200 OK", Duration::from_secs(5), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    caller_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP"));

    // Collect three digits over the socket's command (as a custom IVR would).
    let reply = command(
        &mut app,
        "collect",
        "calls.blocks",
        json!({"callId": id, "blocks": [{"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits",
               "variableName": "pin", "minDigits": 3, "maxDigits": 3, "maxTries": 1, "timeout": 10}]}),
    );
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(reply["result"]["mixedInto"].is_null(), "{reply}");
    std::thread::sleep(Duration::from_millis(500));
    caller_rtp.send_rfc4733("123", 101, 5);
    let collected = next_event(&mut app, "call.digits_collected");
    assert_eq!(collected["data"]["variable"], "pin", "{collected}");
    assert_eq!(collected["data"]["digits"], "123", "{collected}");
    next_event(&mut app, "call.blocks_done");
    let info = http::json(
        server.http_port(),
        "GET",
        &format!("/v1/calls/{id}"),
        Some(APP),
        None,
    )
    .json();
    assert_eq!(info["variables"]["pin"], "123", "{info}");
    assert_eq!(info["state"], "answered", "the call waits for more: {info}");

    // Then bridge it.
    let r = post(
        &server,
        &format!("/v1/calls/{id}/blocks"),
        APP,
        Some(
            json!({"blocks": [{"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL",
            "destinations": [{"destinationType": "SIP_TRUNK", "destination": "target", "timeout": 10}]}]}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.describe());
    let invite =
        target.wait_for_message("the INVITE to the target", Duration::from_secs(10), |m| {
            !m.sent && m.method() == Some("INVITE")
        });
    target_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
    next_event(&mut app, "call.bridged");
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| caller_rtp.send_pcm(&sine(500.0, 2.5, 6000.0)));
        s.spawn(|| target_rtp.send_pcm(&sine(1300.0, 2.5, 6000.0)));
    });
    let window = (
        t + Duration::from_millis(500),
        t + Duration::from_millis(2400),
    );
    let r = post(&server, &format!("/v1/calls/{id}/hangup"), APP, None);
    assert_eq!(r.status, 200, "{}", r.describe());
    caller.wait().assert_success(&server.log_tail());
    target.wait().assert_success(&server.log_tail());
    assert!(
        tone_amplitude(&caller_rtp.heard(window.0, window.1), 1300.0) > 1200.0,
        "caller hears the target"
    );
    assert!(
        tone_amplitude(&target_rtp.heard(window.0, window.1), 500.0) > 1200.0,
        "target hears the caller"
    );
    let cdr = server.wait_for_cdr("the claimed call", |c| c.call_id == id);
    assert_eq!(cdr.variables.get("pin").map(String::as_str), Some("123"));

    // A call nobody claims: its plan runs once the offer times out (here: CALL_REJECTED).
    drop(app);
    let (mut app2, _) = connect(&server, &format!("token={APP}"));
    send(
        &mut app2,
        json!({"op": "subscribe", "numbers": ["800"], "control": true}),
    );
    assert_eq!(
        next_json(&mut app2).expect("subscribed")["type"],
        "subscribed"
    );
    let started = Instant::now();
    let res = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("800")
        .set("rtp_port", free_port())
        .timeout_s(30)
        .run();
    res.assert_success(&server.log_tail());
    assert_eq!(
        res.final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(603),
        "the plan's CALL_REJECTED\n{}",
        res.report()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the plan waited for the offer"
    );
    let offered = next_event(&mut app2, "call.offered");
    next_event(&mut app2, "call.offer_expired");
    assert!(offered["callId"].is_string());
}

/// A server whose number `number` runs `plan` when no application has it, with `extra` in
/// `[server]`; an admin socket that sees every event, and the application's socket, which
/// controls `number`.
fn controlled_number(number: &str, plan: &str, extra: &str) -> (Server, Ws, Ws) {
    let mut prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN}\"\n\n\
         [[apiKeys]]\nname = \"ivr-app\"\nrealm = \"customer\"\ntenant = \"t1\"\nkey = \"{APP}\"\n\n"
    );
    prov.push_str(&tenant_with_prompts());
    prov.push_str(&number_with_plan(number, "after-the-app", plan));
    let server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: extra.into(),
            ..ServerOptions::default()
        },
    );
    let (mut observer, _) = connect(&server, &format!("token={ADMIN}"));
    subscribe(&mut observer, json!({"op": "subscribe"}));
    let (mut app, _) = connect(&server, &format!("token={APP}"));
    send(
        &mut app,
        json!({"op": "subscribe", "numbers": [number], "control": true}),
    );
    assert_eq!(
        next_json(&mut app).expect("subscribed")["type"],
        "subscribed"
    );
    (server, observer, app)
}

#[test]
fn a_call_whose_application_goes_away_is_handed_back_to_its_plan() {
    let (server, mut observer, mut app) = controlled_number(
        "801",
        r##"  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "HANGUP", hangupCause = "CALL_REJECTED" },"##,
        "offerTimeout = 5\neventsResumeWindow = 1\n",
    );
    let (caller, _caller_rtp) = reinvited_caller(&server, "801");
    let offered = next_event(&mut app, "call.offered");
    let id = offered["callId"].as_str().expect("callId").to_string();
    let reply = command(&mut app, "claim", "calls.claim", json!({"callId": id}));
    assert_eq!(reply["ok"], true, "{reply}");
    let r = post(&server, &format!("/v1/calls/{id}/answer"), APP, None);
    assert_eq!(r.status, 200, "{}", r.describe());

    // The application's socket goes; its session waits the resume window (1 s), then the
    // call is the plan's again: the prompt, then the plan's HANGUP.
    drop(app);
    let gone = Instant::now();
    let released = next_event(&mut observer, "call.released");
    assert_eq!(released["callId"], id.as_str(), "{released}");
    assert_eq!(released["data"]["by"], "ivr-app", "{released}");
    assert_eq!(released["data"]["reason"], "gone", "{released}");
    assert!(
        gone.elapsed() >= Duration::from_millis(900),
        "not before the session's resume window ran out: {:?}",
        gone.elapsed()
    );
    next_event(&mut observer, "call.hangup");
    caller.wait().assert_success(&server.log_tail());
    let cdr = server.wait_for_cdr("the released call", |c| c.call_id == id);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    assert!(
        cdr.talk_time_ms >= prompt("enter-digits").duration().as_millis() as i64,
        "the plan's prompt played first: {}",
        cdr_text(&cdr)
    );
}

#[test]
fn a_claimed_call_left_waiting_goes_back_to_its_plan_after_the_claim_idle_timeout() {
    let (server, mut observer, mut app) = controlled_number(
        "802",
        r##"  { blockType = "HANGUP", hangupCause = "CALL_REJECTED" },"##,
        "offerTimeout = 5\nclaimIdleTimeout = 1.5\n",
    );
    let (caller, _caller_rtp) = reinvited_caller(&server, "802");
    let id = next_event(&mut app, "call.offered")["callId"]
        .as_str()
        .expect("callId")
        .to_string();
    // Claimed over REST and answered, then nothing: the application is stuck.
    let r = post(&server, &format!("/v1/calls/{id}/claim"), APP, None);
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = post(&server, &format!("/v1/calls/{id}/answer"), APP, None);
    assert_eq!(r.status, 200, "{}", r.describe());
    let answered = Instant::now();
    let released = next_event(&mut observer, "call.released");
    assert_eq!(released["callId"], id.as_str(), "{released}");
    assert_eq!(released["data"]["reason"], "idle", "{released}");
    assert!(
        answered.elapsed() >= Duration::from_millis(1300),
        "after the idle timeout: {:?}",
        answered.elapsed()
    );
    caller.wait().assert_success(&server.log_tail());
    let cdr = server.wait_for_cdr("the released call", |c| c.call_id == id);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    drop(app);
}
