//! Calls the API places (`POST /v1/calls`): a registered SIPp phone is rung, answers, hears the
//! blocks, and gets our BYE; a trunk destination that is busy or rings until the API hangs up.
//! Events on the WebSocket and the CDR tell each call's story.

mod common;

use common::ws::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN: &str = "cp_originate_e2e_admin_key_0123456";

fn server(extra: &str) -> Server {
    let mut prov = format!("[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN}\"\n\n");
    prov.push_str(&tenant_with_prompts());
    prov.push_str("[[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"secret\"\n\n");
    prov.push_str(extra);
    Server::start(&prov, true)
}

fn place(server: &Server, body: Value) -> http::HttpResponse {
    http::json(
        server.http_port(),
        "POST",
        "/v1/calls",
        Some(ADMIN),
        Some(&body),
    )
}

fn cdr_of(server: &Server, id: &str) -> Cdr {
    let id = id.to_string();
    server.wait_for_cdr("the placed call's CDR", move |c| c.call_id == id)
}

#[test]
fn a_placed_call_rings_the_phone_runs_its_blocks_and_hangs_up() {
    let server = server("");
    let (mut ws, _) = connect(&server, &format!("token={ADMIN}"));
    subscribe(&mut ws, json!({"op": "subscribe", "lines": ["alice"]}));
    let phone_rtp = RtpPeer::new();
    let phone = registered_phone(&server, "alice", "secret", phone_rtp.port(), 6000);

    let r = place(
        &server,
        json!({
            "tenant": "t1",
            "to": {"destinationType": "SIP_USER", "destination": "alice"},
            "callerId": "+4922199",
            "blocks": [
                {"blockType": "ANNOUNCEMENT", "announcementName": "welcome"},
                {"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}
            ]
        }),
    );
    assert_eq!(r.status, 201, "{}\n{}", r.describe(), server.log_tail());
    let placed = r.json();
    let id = placed["id"].as_str().expect("id").to_string();
    assert_eq!(placed["state"], "calling");
    assert_eq!(placed["direction"], "outbound");
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/calls/{id}").as_str())
    );

    // The phone hears the announcement from us.
    let welcome = prompt("welcome");
    phone_rtp
        .wait_for_audio(&welcome.samples[..8000], 0, 0.8, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the phone did not hear the announcement: {e}"));
    let phone = phone.wait();
    phone.assert_success(&server.log_tail());
    let invite = phone
        .received_request("INVITE")
        .expect("the phone was rung");
    let from = invite.header("From").unwrap_or_default();
    assert!(from.contains("sip:+4922199@"), "From: {from}");
    assert!(
        phone.received_request("BYE").is_some(),
        "HANGUP sends the BYE\n{}",
        phone.report()
    );

    let cdr = cdr_of(&server, &id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "system", "{}", cdr_text(&cdr));
    assert!(cdr.answer_time.is_some(), "{}", cdr_text(&cdr));
    assert_eq!(cdr.caller, "+4922199");
    assert_eq!(cdr.legs[0].direction, "outbound", "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[0].destination, "alice");
    assert_eq!(cdr.legs[0].destination_type.as_deref(), Some("SIP_USER"));
    assert_eq!(
        cdr.sip_call_id,
        invite.header("Call-ID").unwrap_or_default()
    );

    let events = events_until_finished(&mut ws, &id);
    let t = types(&events);
    assert_eq!(t.first().map(String::as_str), Some("call.created"), "{t:?}");
    assert!(t.contains(&"call.answered".to_string()), "{t:?}");
    assert_eq!(
        &t[t.len() - 2..],
        ["call.hangup", "call.finished"],
        "{events:#?}"
    );
    assert_eq!(events[0]["data"]["to"], "alice");
}

#[test]
fn a_placed_call_that_is_busy_or_hung_up_while_ringing_leaves_its_cdr() {
    let mut busy = Sipp::uas("uas_busy.xml").spawn();
    let mut ringer = Sipp::uas("uas_ring_forever.xml").spawn();
    busy.wait_listening();
    ringer.wait_listening();
    let server = server(&format!(
        "{}{}",
        trunk("busy", busy.port()),
        trunk("ringer", ringer.port())
    ));
    let hangup = json!([{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]);

    let r = place(
        &server,
        json!({
            "tenant": "t1",
            "to": {"destinationType": "SIP_TRUNK", "destination": "4930111@busy"},
            "callerId": "100",
            "blocks": hangup
        }),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let cdr = cdr_of(&server, &id);
    assert_eq!(cdr.hangup_cause, "USER_BUSY", "{}", cdr_text(&cdr));
    assert_eq!(cdr.sip_status, Some(486), "{}", cdr_text(&cdr));
    assert!(cdr.answer_time.is_none());
    busy.wait().assert_success(&server.log_tail());

    let r = place(
        &server,
        json!({
            "tenant": "t1",
            "to": {"destinationType": "SIP_TRUNK", "destination": "4930222@ringer"},
            "callerId": "100",
            "timeout": 20,
            "blocks": hangup
        }),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let id = r.json()["id"].as_str().expect("id").to_string();
    ringer.wait_for_message("the INVITE", Duration::from_secs(10), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    // Ringing: listed, and hung up by the API (a CANCEL to the trunk).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let c = http::json(
            server.http_port(),
            "GET",
            &format!("/v1/calls/{id}"),
            Some(ADMIN),
            None,
        );
        assert_eq!(c.status, 200, "{}", c.describe());
        if c.json()["state"] == "ringing" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", c.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Digits to a party that has not answered: 409, naming the state.
    let d = http::json(
        server.http_port(),
        "POST",
        &format!("/v1/calls/{id}/dtmf"),
        Some(ADMIN),
        Some(&json!({"digits": "1"})),
    );
    assert_eq!(d.status, 409, "{}", d.describe());
    assert_eq!(d.error().1.as_deref(), Some("state"));
    let h = http::json(
        server.http_port(),
        "POST",
        &format!("/v1/calls/{id}/hangup"),
        Some(ADMIN),
        Some(&json!({"hangupCause": "CALL_REJECTED"})),
    );
    assert_eq!(h.status, 200, "{}", h.describe());
    assert_eq!(h.json()["state"], "ending");
    let ringer = ringer.wait();
    ringer.assert_success(&server.log_tail());
    assert!(ringer.received_request("CANCEL").is_some());
    let cdr = cdr_of(&server, &id);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "api", "{}", cdr_text(&cdr));

    // History: both calls, newest first, a page at a time.
    let page = |q: &str| {
        let r = http::json(
            server.http_port(),
            "GET",
            &format!("/v1/cdrs{q}"),
            Some(ADMIN),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        r.json()
    };
    let first = page("?limit=1");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(1), "{first}");
    assert_eq!(first["items"][0]["callId"], id.as_str(), "{first}");
    assert_eq!(first["items"][0]["hangupCause"], "CALL_REJECTED");
    let next = first["next"].as_str().expect("a next page");
    let second = page(&format!("?limit=1&cursor={next}"));
    assert_eq!(second["items"][0]["hangupCause"], "USER_BUSY", "{second}");
    let third = page(&format!(
        "?limit=1&cursor={}",
        second["next"].as_str().unwrap_or("")
    ));
    assert_eq!(third["items"], json!([]), "{third}");
    assert_eq!(third["next"], Value::Null);
    let r = http::json(
        server.http_port(),
        "GET",
        "/v1/cdrs?limit=0",
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some("limit"));

    // Not registered: 409 at once, nothing placed.
    let r = place(
        &server,
        json!({
            "tenant": "t1",
            "to": {"destinationType": "SIP_USER", "destination": "alice"},
            "callerId": "100",
            "blocks": hangup
        }),
    );
    assert_eq!(r.status, 409, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some("to.destination"));
}

#[test]
fn a_callback_connects_two_parties_who_hear_each_other() {
    const FIRST_HZ: f64 = 600.0;
    const SECOND_HZ: f64 = 1400.0;
    let first_rtp = RtpPeer::new();
    let second_rtp = RtpPeer::new();
    let mut first = Sipp::uas("uas_answer.xml")
        .set("rtp_port", first_rtp.port())
        .set("answer_delay_ms", 300)
        .set("hangup_after_ms", 0)
        .timeout_s(40)
        .spawn();
    // The second party hangs up after 4 s of talk: the bridge ends, and so does the call.
    let mut second = Sipp::uas("uas_answer.xml")
        .set("rtp_port", second_rtp.port())
        .set("answer_delay_ms", 300)
        .set("hangup_after_ms", 4000)
        .timeout_s(40)
        .spawn();
    first.wait_listening();
    second.wait_listening();
    let server = server(&format!(
        "{}{}",
        trunk("first", first.port()),
        trunk("second", second.port())
    ));
    let r = http::json(
        server.http_port(),
        "POST",
        "/v1/calls/callback",
        Some(ADMIN),
        Some(&json!({
            "tenant": "t1",
            "first": {"destinationType": "SIP_TRUNK", "destination": "4930111@first"},
            "second": {"destinationType": "SIP_TRUNK", "destination": "4930222@second", "timeout": 15},
            "billingAccount": "acct-77"
        })),
    );
    assert_eq!(r.status, 201, "{}\n{}", r.describe(), server.log_tail());
    let id = r.json()["id"].as_str().expect("id").to_string();

    let invite1 = first.wait_for_message(
        "the INVITE to the first party",
        Duration::from_secs(10),
        |m| !m.sent && m.method() == Some("INVITE"),
    );
    let invite2 = second.wait_for_message(
        "the INVITE to the second party",
        Duration::from_secs(10),
        |m| !m.sent && m.method() == Some("INVITE"),
    );
    // Each sees the other's number.
    let from1 = invite1.header("From").unwrap_or_default();
    let from2 = invite2.header("From").unwrap_or_default();
    assert!(
        from1.contains("sip:4930222@"),
        "the first party sees: {from1}"
    );
    assert!(
        from2.contains("sip:4930111@"),
        "the second party sees: {from2}"
    );
    first_rtp.set_remote(sdp_audio_addr(invite1.body()).expect("SDP in the first INVITE"));
    second_rtp.set_remote(sdp_audio_addr(invite2.body()).expect("SDP in the second INVITE"));
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| first_rtp.send_pcm(&sine(FIRST_HZ, 3.0, 6000.0)));
        s.spawn(|| second_rtp.send_pcm(&sine(SECOND_HZ, 3.0, 6000.0)));
    });
    let window = (
        start + Duration::from_millis(500),
        start + Duration::from_millis(2800),
    );
    let at_first = first_rtp.heard(window.0, window.1);
    let at_second = second_rtp.heard(window.0, window.1);
    assert!(
        tone_amplitude(&at_first, SECOND_HZ) > 1000.0
            && tone_amplitude(&at_first, FIRST_HZ) < 300.0,
        "the first party hears the second: {} samples, second {:.0}, own {:.0}",
        at_first.len(),
        tone_amplitude(&at_first, SECOND_HZ),
        tone_amplitude(&at_first, FIRST_HZ)
    );
    assert!(
        tone_amplitude(&at_second, FIRST_HZ) > 1000.0
            && tone_amplitude(&at_second, SECOND_HZ) < 300.0,
        "the second party hears the first: {} samples, first {:.0}, own {:.0}",
        at_second.len(),
        tone_amplitude(&at_second, FIRST_HZ),
        tone_amplitude(&at_second, SECOND_HZ)
    );
    second.wait().assert_success(&server.log_tail());
    let first = first.wait();
    first.assert_success(&server.log_tail());
    assert!(
        first.received_request("BYE").is_some(),
        "{}",
        first.report()
    );
    let cdr = cdr_of(&server, &id);
    assert_eq!(
        cdr.variables.get("billing_account").map(String::as_str),
        Some("acct-77"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.legs.len(), 2, "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[1].destination, "4930222@second");
    assert!(cdr.legs[1].answer_time.is_some(), "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "callee", "{}", cdr_text(&cdr));
}

/// A tenant whose EXTERNALNUMBER calls go out through the trunk `carrier` at `port`.
fn tenant_with_carrier(port: u16) -> String {
    format!(
        "[[tenants]]\nname = \"t1\"\ncustomerNumber = 200002\ndefaultTrunk = \"carrier\"\n\n{}",
        trunk("carrier", port)
    )
}

fn call_init(server: &Server, query: &str) -> http::HttpResponse {
    http::json(
        server.http_port(),
        "GET",
        &format!("/v1/call-init?{query}"),
        Some(ADMIN),
        None,
    )
}

#[test]
fn click_to_dial_rings_the_user_first_then_bridges_the_target() {
    const PHONE_HZ: f64 = 700.0;
    const TARGET_HZ: f64 = 1500.0;
    let target_rtp = RtpPeer::new();
    let mut target = Sipp::uas("uas_answer.xml")
        .set("rtp_port", target_rtp.port())
        .set("answer_delay_ms", 200)
        .set("hangup_after_ms", 3000)
        .arg("-m")
        .arg("2")
        .timeout_s(40)
        .spawn();
    target.wait_listening();
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN}\"\n\n{}\
         [[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"secret\"\nautoAnswer = true\n\n\
         [[sipUsers]]\ntenant = \"t1\"\nusername = \"bob\"\npassword = \"secret\"\n\n",
        tenant_with_carrier(target.port())
    );
    let server = Server::start(&prov, true);
    let phone_rtp = RtpPeer::new();
    let mut phone = registered_phone(&server, "alice", "secret", phone_rtp.port(), 14000);

    // Refusals first: unknown user, a user with no phone, a bad number.
    let r = call_init(&server, "user=nobody&to=4930555");
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = call_init(&server, "user=bob&to=4930555");
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(
        r.text().contains("no registered device"),
        "{}",
        r.describe()
    );
    let r = call_init(&server, "user=alice&to=49-30");
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some("to"));
    let r = http::json(
        server.http_port(),
        "GET",
        "/v1/call-init?user=alice&to=4930555",
        None,
        None,
    );
    assert_eq!(
        r.status,
        401,
        "a key is needed unless keyless: {}",
        r.describe()
    );

    // alice's phone answers by itself (her own `autoAnswer` setting; no parameter needed).
    let r = call_init(&server, "user=alice&to=4930555&cidnum=%2B4922100");
    assert_eq!(r.status, 200, "{}\n{}", r.describe(), server.log_tail());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let ring = phone.wait_for_message("the INVITE to the phone", Duration::from_secs(10), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    let from = ring.header("From").unwrap_or_default();
    assert!(
        from.contains("sip:4930555@"),
        "the phone shows the target: {from}"
    );
    let info = ring.header("Call-Info").unwrap_or_default();
    assert!(info.contains("answer-after=0"), "Call-Info: {info}");
    let alert = ring.header("Alert-Info").unwrap_or_default();
    assert!(
        alert.contains("info=alert-autoanswer"),
        "Alert-Info: {alert}"
    );
    let out = target.wait_for_message("the INVITE to the target", Duration::from_secs(10), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    assert!(
        out.first_line().starts_with("INVITE sip:4930555@"),
        "{}",
        out.first_line()
    );
    let from = out.header("From").unwrap_or_default();
    assert!(
        from.contains("sip:+4922100@"),
        "the target sees cidnum: {from}"
    );
    assert!(out.header("Privacy").is_none());

    phone_rtp.set_remote(sdp_audio_addr(ring.body()).expect("SDP to the phone"));
    target_rtp.set_remote(sdp_audio_addr(out.body()).expect("SDP to the target"));
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| phone_rtp.send_pcm(&sine(PHONE_HZ, 2.5, 6000.0)));
        s.spawn(|| target_rtp.send_pcm(&sine(TARGET_HZ, 2.5, 6000.0)));
    });
    let window = (
        start + Duration::from_millis(500),
        start + Duration::from_millis(2300),
    );
    let at_phone = phone_rtp.heard(window.0, window.1);
    let at_target = target_rtp.heard(window.0, window.1);
    assert!(
        tone_amplitude(&at_phone, TARGET_HZ) > 1000.0,
        "the user hears the target: {:.0}",
        tone_amplitude(&at_phone, TARGET_HZ)
    );
    assert!(
        tone_amplitude(&at_target, PHONE_HZ) > 1000.0,
        "the target hears the user: {:.0}",
        tone_amplitude(&at_target, PHONE_HZ)
    );
    let cdr = cdr_of(&server, &id);
    assert_eq!(cdr.legs.len(), 2, "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[0].destination, "alice");
    assert_eq!(cdr.legs[1].destination, "4930555");
    assert_eq!(
        cdr.variables.get("presented_number").map(String::as_str),
        Some("+4922100")
    );

    // Withheld: the target sees anonymous, with Privacy: id, and the CDR keeps it private.
    // `autoAnswer=0` overrides alice's setting: her phone rings as usual.
    let r = call_init(&server, "user=alice&to=4930666&clir=1&autoAnswer=0");
    assert_eq!(r.status, 200, "{}", r.describe());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let ring = phone.wait_for_message(
        "the second INVITE to the phone",
        Duration::from_secs(10),
        |m| {
            !m.sent
                && m.method() == Some("INVITE")
                && m.header("From").unwrap_or_default().contains("4930666")
        },
    );
    assert!(
        ring.header("Call-Info").is_none(),
        "no auto-answer this time"
    );
    assert!(ring.header("Alert-Info").is_none());
    let out = target.wait_for_message(
        "the second INVITE to the target",
        Duration::from_secs(15),
        |m| !m.sent && m.method() == Some("INVITE") && m.first_line().contains("4930666"),
    );
    let from = out.header("From").unwrap_or_default();
    assert!(from.contains("sip:anonymous@"), "From: {from}");
    assert!(from.contains("Anonymous"), "From: {from}");
    assert_eq!(out.header("Privacy").as_deref(), Some("id"));
    let cdr = cdr_of(&server, &id);
    assert_eq!(
        cdr.variables.get("presented_number").map(String::as_str),
        Some("private"),
        "{}",
        cdr_text(&cdr)
    );
    target.wait().assert_success(&server.log_tail());
    phone.wait().assert_success(&server.log_tail());
}

#[test]
fn click_to_dial_from_a_network_not_allowed_is_refused() {
    let prov = format!(
        "[clickToDial]\nallowFrom = [\"192.0.2.0/24\"]\n\n\
         [[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN}\"\n\n{}\
         [[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"secret\"\n\n",
        tenant_with_carrier(free_port())
    );
    let server = Server::start(&prov, true);
    let r = call_init(&server, "user=alice&to=4930555");
    assert_eq!(r.status, 403, "{}", r.describe());
}
