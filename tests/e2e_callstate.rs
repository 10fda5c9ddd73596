//! Call-state callbacks (`callstateInfoUrl`) end to end: a call that is answered, gets a
//! digit, rings a destination and is bridged posts its events in order, numbered, to the
//! number's URL; a delivery that fails is retried, and the next event waits for it.

mod common;

use common::webhook::*;
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

#[test]
fn events_arrive_in_order_and_failed_deliveries_are_retried() {
    let callee_rtp = RtpPeer::new();
    let mut callee = Sipp::uas("uas_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("answer_delay_ms", 500)
        .set("hangup_after_ms", 1000)
        .spawn();
    callee.wait_listening();
    // The first delivery of every event fails with 503; the retry succeeds.
    let seen = Mutex::new(HashSet::new());
    let hook = WebhookServer::start(move |r| {
        let seq = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["seq"].as_u64());
        if seen.lock().expect("lock").insert(seq) {
            HookReply::Raw(503, "text/plain", "try again".into())
        } else {
            HookReply::text("ok")
        }
    });
    let plan = "  { blockType = \"COLLECT_DIGITS\", announcementName = \"enter-digits\", variableName = \"d\", minDigits = 1, maxDigits = 1, maxTries = 1, timeout = 10 },\n  { blockType = \"BRIDGE\", bridgeMode = \"SEQUENTIAL\", destinations = [ { destinationType = \"SIP_TRUNK\", destination = \"gw\", timeout = 10 } ] },";
    let prov = format!(
        "{}{}{}",
        tenant_with_prompts(),
        trunk("gw", callee.port()),
        number_with_plan("900", "events", plan).replacen(
            "routingPlan = \"events\"\n",
            &format!(
                "routingPlan = \"events\"\ncallstateInfoUrl = \"{}\"\n",
                hook.url("/events")
            ),
            1
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("900")
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(5, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the prompt should play: {e}\n{}", server.log_tail()));
    rtp.send_rfc4733("7", 101, 5);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    callee.wait().assert_success("the bridge target");
    let cdr = server.cdr_for_call_id(&caller.call_id);

    // Six events, each sent twice (503, then 200).
    let reqs = hook.wait_for("/events", 12, Duration::from_secs(20));
    let bodies: Vec<Value> = reqs.iter().map(HookRequest::json).collect();
    let seqs: Vec<u64> = bodies
        .iter()
        .map(|b| b["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs,
        vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6],
        "in order, each retried before the next is sent: {bodies:#?}"
    );
    let types: Vec<&str> = bodies
        .iter()
        .step_by(2)
        .map(|b| b["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        vec![
            "call.created",
            "call.answered",
            "call.dtmf",
            "call.ringing",
            "call.bridged",
            "call.hangup"
        ]
    );
    for b in &bodies {
        assert_eq!(b["callId"], cdr.call_id.as_str(), "{b}");
        assert_eq!(b["customerNumber"], 200002, "{b}");
        assert!(b["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{b}");
    }
    assert_eq!(bodies[0]["to"], "900");
    assert_eq!(bodies[4]["digit"], "7");
    let hangup = &bodies[10];
    assert_eq!(hangup["cause"], "NORMAL_CLEARING", "{hangup}");
    assert_eq!(hangup["hangupBy"], "callee", "{hangup}");
    assert!(
        hangup["durationMs"].as_i64().is_some_and(|d| d >= 1000),
        "{hangup}"
    );
    assert!(
        hangup["talkTimeMs"].as_i64().is_some_and(|d| d > 0),
        "{hangup}"
    );
}
