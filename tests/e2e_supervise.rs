//! Supervision of a connected call, against the real binary: a SIPp customer (caller) bridged
//! to a SIPp agent (callee), and a SIPp supervisor dialled in through the API, each sending its
//! own tone. In listen mode the supervisor hears both and neither hears it; in whisper mode
//! the agent hears it and the customer does not; in barge mode both do; intercept ends the
//! agent's leg and leaves the customer talking with the supervisor. Refusals are 409/400.
//! A supervisor can also be named by a leg of another call (its phone called in, or a console
//! called it through the API): that leg moves into the supervised call and its call ends.

mod common;

use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "cp_supervise_admin_key_0123456789";
const CUSTOMER_HZ: f64 = 500.0;
const AGENT_HZ: f64 = 1300.0;
const SUPERVISOR_HZ: f64 = 900.0;
const HEARD: f64 = 1200.0;
const SILENT: f64 = 300.0;

fn levels(pcm: &[i16]) -> String {
    format!(
        "{} samples; customer {CUSTOMER_HZ} Hz: {:.0}, agent {AGENT_HZ} Hz: {:.0}, supervisor {SUPERVISOR_HZ} Hz: {:.0}",
        pcm.len(),
        tone_amplitude(pcm, CUSTOMER_HZ),
        tone_amplitude(pcm, AGENT_HZ),
        tone_amplitude(pcm, SUPERVISOR_HZ)
    )
}

fn supervise(server: &Server, id: &str, body: serde_json::Value) -> http::HttpResponse {
    http::json(
        server.http_port(),
        "POST",
        &format!("/v1/calls/{id}/supervise"),
        Some(KEY),
        Some(&body),
    )
}

/// A SIPp agent (trunk `agent`, answering after 1 s) and supervisor phone (trunk `sup`), and
/// the server: number 500 bridges its callers to the agent; `more` is provisioned too.
fn supervised_setup(more: &str) -> (SippProcess, RtpPeer, SippProcess, RtpPeer, Server) {
    let (agent, agent_rtp) = reinvited_callee(1000);
    let (sup, sup_rtp) = reinvited_callee(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}{more}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("sup", sup.port()),
        number_with_plan("500", "b", &bridge_to_trunk("agent", "NORMAL_CLEARING"))
    );
    let server = Server::start(&prov, true);
    (agent, agent_rtp, sup, sup_rtp, server)
}

/// Asserts an error answer with `status` naming `field`.
fn refused(r: &http::HttpResponse, status: u16, field: &str) {
    assert_eq!(r.status, status, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some(field), "{}", r.describe());
}

/// Switches the supervisor on call `id` to `mode` (if given), then lets everyone talk: the
/// window in which to judge who heard whom.
fn phase(server: &Server, id: &str, mode: Option<&str>) -> (Instant, Instant) {
    if let Some(m) = mode {
        let r = supervise(server, id, serde_json::json!({"mode": m}));
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    talk_window()
}

#[test]
fn a_supervisor_listens_whispers_barges_and_intercepts() {
    let (mut agent, agent_rtp, mut sup, sup_rtp, server) = supervised_setup("");
    let (mut customer, customer_rtp) = reinvited_caller(&server, "500");
    let id = server.started_call_id();
    let to_sup = serde_json::json!({"destinationType": "SIP_TRUNK", "destination": "sup"});

    // Not connected yet: 409.
    let r = supervise(
        &server,
        &id,
        serde_json::json!({"mode": "listen", "supervisor": to_sup}),
    );
    assert_eq!(r.status, 409, "{}", r.describe());
    let ok =
        customer.wait_for_message("the 200 OK to the customer", Duration::from_secs(15), |m| {
            !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
        });
    let invite = agent.wait_for_message("the INVITE to the agent", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    customer_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP"));
    agent_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));

    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| customer_rtp.send_pcm(&sine(CUSTOMER_HZ, 14.0, 6000.0)));
        s.spawn(|| agent_rtp.send_pcm(&sine(AGENT_HZ, 14.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(300));
        // Refusals: a bad mode, no supervisor to switch, a leg id instead of a destination.
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "spy", "supervisor": to_sup}),
        );
        refused(&r, 400, "mode");
        let r = supervise(&server, &id, serde_json::json!({"mode": "barge"}));
        refused(&r, 409, "supervisor");
        // A leg of the call itself cannot supervise it; a leg id that names no call is 404.
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": format!("{id}.1")}),
        );
        refused(&r, 409, "supervisor");
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": "no-such-call.0"}),
        );
        assert_eq!(r.status, 404, "{}", r.describe());
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": "sup"}),
        );
        refused(&r, 400, "supervisor");

        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": to_sup}),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let legs = r.json()["legs"].clone();
        assert_eq!(legs[2]["party"], "supervisor", "{legs}");
        // A second supervisor: 409.
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": to_sup}),
        );
        assert_eq!(r.status, 409, "{}", r.describe());
        let invite = sup.wait_for_message(
            "the INVITE to the supervisor",
            Duration::from_secs(10),
            |m| !m.sent && m.method() == Some("INVITE"),
        );
        assert!(
            invite.header("From").unwrap_or_default().contains("sipp"),
            "the supervisor sees the customer's number: {}",
            invite.first_line()
        );
        sup_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
        sup.wait_for_message("the supervisor's 200 OK", Duration::from_secs(5), |m| {
            m.sent && m.status() == Some(200)
        });
        s.spawn(|| sup_rtp.send_pcm(&sine(SUPERVISOR_HZ, 11.0, 6000.0)));
        let mut phase = |name: &'static str, mode: Option<&str>| {
            let (from, to) = phase(&server, &id, mode);
            windows.push((name, from, to));
        };
        phase("listen", None);
        phase("whisper", Some("whisper"));
        phase("barge", Some("barge"));
        let r = supervise(&server, &id, serde_json::json!({"mode": "intercept"}));
        assert_eq!(r.status, 200, "{}", r.describe());
        agent.wait_for_message("the agent's BYE", Duration::from_secs(5), |m| {
            !m.sent && m.method() == Some("BYE")
        });
        let (from, to) = talk_window();
        windows.push(("intercept", from, to));
        let info = http::json(
            server.http_port(),
            "GET",
            &format!("/v1/calls/{id}"),
            Some(KEY),
            None,
        )
        .json();
        assert_eq!(info["bridgedTo"], format!("{id}.2"), "{info}");
        assert_eq!(info["legs"][1]["state"], "ended", "{info}");
        // The supervisor is the connected party now: none is left to stop.
        let r = http::json(
            server.http_port(),
            "DELETE",
            &format!("/v1/calls/{id}/supervise"),
            Some(KEY),
            None,
        );
        assert_eq!(r.status, 409, "{}", r.describe());
        let r = http::json(
            server.http_port(),
            "POST",
            &format!("/v1/calls/{id}/hangup"),
            Some(KEY),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    customer.wait().assert_success(&server.log_tail());
    agent.wait().assert_success(&server.log_tail());
    sup.wait().assert_success(&server.log_tail());

    for (name, from, to) in &windows {
        let at_customer = customer_rtp.heard(*from, *to);
        let at_agent = agent_rtp.heard(*from, *to);
        let at_sup = sup_rtp.heard(*from, *to);
        println!("{name:9} customer hears {}", levels(&at_customer));
        println!("{name:9} agent    hears {}", levels(&at_agent));
        println!("{name:9} sup      hears {}", levels(&at_sup));
        let ctx = || {
            format!(
                "{name}\n customer: {}\n agent: {}\n supervisor: {}\n{}",
                levels(&at_customer),
                levels(&at_agent),
                levels(&at_sup),
                server.log_tail()
            )
        };
        let hears = |pcm: &[i16], hz: f64| tone_amplitude(pcm, hz) > HEARD;
        let silent = |pcm: &[i16], hz: f64| tone_amplitude(pcm, hz) < SILENT;
        match *name {
            "listen" => {
                assert!(
                    hears(&at_sup, CUSTOMER_HZ) && hears(&at_sup, AGENT_HZ),
                    "{}",
                    ctx()
                );
                assert!(
                    silent(&at_customer, SUPERVISOR_HZ) && silent(&at_agent, SUPERVISOR_HZ),
                    "{}",
                    ctx()
                );
                assert!(
                    hears(&at_customer, AGENT_HZ) && hears(&at_agent, CUSTOMER_HZ),
                    "{}",
                    ctx()
                );
            }
            "whisper" => {
                assert!(
                    hears(&at_sup, CUSTOMER_HZ) && hears(&at_sup, AGENT_HZ),
                    "{}",
                    ctx()
                );
                assert!(
                    hears(&at_agent, SUPERVISOR_HZ),
                    "the agent hears the whisper: {}",
                    ctx()
                );
                assert!(
                    silent(&at_customer, SUPERVISOR_HZ),
                    "the customer does not: {}",
                    ctx()
                );
                assert!(
                    hears(&at_customer, AGENT_HZ) && hears(&at_agent, CUSTOMER_HZ),
                    "{}",
                    ctx()
                );
            }
            "barge" => {
                assert!(
                    hears(&at_customer, SUPERVISOR_HZ) && hears(&at_agent, SUPERVISOR_HZ),
                    "{}",
                    ctx()
                );
                assert!(
                    hears(&at_customer, AGENT_HZ) && hears(&at_agent, CUSTOMER_HZ),
                    "{}",
                    ctx()
                );
                assert!(
                    hears(&at_sup, CUSTOMER_HZ) && hears(&at_sup, AGENT_HZ),
                    "{}",
                    ctx()
                );
            }
            _ => {
                assert!(hears(&at_customer, SUPERVISOR_HZ), "{}", ctx());
                assert!(
                    silent(&at_customer, AGENT_HZ),
                    "the agent is gone: {}",
                    ctx()
                );
                assert!(hears(&at_sup, CUSTOMER_HZ), "{}", ctx());
            }
        }
    }
    let cdr = server.wait_for_cdr("the supervised call's CDR", |c| c.call_id == id);
    assert_eq!(cdr.legs.len(), 3, "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[2].destination, "sup", "{}", cdr_text(&cdr));
    assert!(cdr.legs[2].answer_time.is_some(), "{}", cdr_text(&cdr));
    for t in [
        "supervisor.calling",
        "supervisor.joined",
        "supervisor.mode",
        "supervisor.intercepted",
    ] {
        assert!(
            server.metric(&format!("callplane_call_events_total{{type=\"{t}\"}}")) >= 1.0,
            "{t} counted"
        );
    }
}

/// A plan (or block list) that keeps a call waiting: a PIN prompt with a minute to answer.
const WAITING: &str = r#"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 4, maxDigits = 4, maxTries = 1, timeout = 60 },"#;

/// Polls `GET /v1/calls/{id}` until the call is answered.
fn wait_call_answered(server: &Server, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = http::json(
            server.http_port(),
            "GET",
            &format!("/v1/calls/{id}"),
            Some(KEY),
            None,
        )
        .json();
        if info["state"] == "answered" {
            return info;
        }
        assert!(Instant::now() < deadline, "call {id} not answered: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_supervisor_named_by_its_leg_moves_in_from_its_own_call() {
    // The first supervisor's phone (trunk `sup`) is called by a console through the API (an
    // originated call: its first leg is an outbound dialog) ...
    let (mut agent, agent_rtp, mut sup, sup_rtp, server) =
        supervised_setup(&number_with_plan("600", "lobby", WAITING));
    let (mut customer, customer_rtp) = reinvited_caller(&server, "500");
    let id = server.started_call_id();
    wait_answered(&mut customer, &customer_rtp);
    wait_invited(&mut agent, &agent_rtp);

    let r = http::json(
        server.http_port(),
        "POST",
        "/v1/calls",
        Some(KEY),
        Some(&serde_json::json!({
            "tenant": "t1",
            "to": {"destinationType": "SIP_TRUNK", "destination": "sup"},
            "callerId": "+4930100",
            "blocks": [{"blockType": "COLLECT_DIGITS", "announcementName": "enter-digits",
                        "variableName": "pin", "minDigits": 4, "maxDigits": 4, "maxTries": 1,
                        "timeout": 60}]
        })),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let console_call = r.json()["id"].as_str().expect("id").to_string();
    wait_invited(&mut sup, &sup_rtp);
    wait_call_answered(&server, &console_call);

    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    let sup2_rtp = RtpPeer::new();
    let mut sup2 = None;
    std::thread::scope(|s| {
        s.spawn(|| customer_rtp.send_pcm(&sine(CUSTOMER_HZ, 14.0, 6000.0)));
        s.spawn(|| agent_rtp.send_pcm(&sine(AGENT_HZ, 14.0, 6000.0)));
        s.spawn(|| sup_rtp.send_pcm(&sine(SUPERVISOR_HZ, 7.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(300));
        // A leg the console's call does not have: 404.
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": format!("{console_call}.5")}),
        );
        refused(&r, 404, "supervisor");
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": format!("{console_call}.0")}),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let legs = r.json()["legs"].clone();
        assert_eq!(legs[2]["party"], "supervisor", "{legs}");
        assert_eq!(legs[2]["state"], "answered", "{legs}");
        // The console's call is over: its leg lives on in the supervised call.
        let moved = server.wait_for_cdr("the console call's CDR", |c| c.call_id == console_call);
        assert_eq!(moved.hangup_by, "moved", "{}", cdr_text(&moved));
        assert_eq!(
            moved.variables.get("transferred_to_call"),
            Some(&id),
            "{}",
            cdr_text(&moved)
        );
        let mut phase = |name: &'static str, mode: Option<&str>| {
            let (from, to) = phase(&server, &id, mode);
            windows.push((name, from, to));
        };
        phase("listen", None);
        phase("barge", Some("barge"));
        // Done: the supervisor is hung up by the supervised call.
        let r = http::json(
            server.http_port(),
            "DELETE",
            &format!("/v1/calls/{id}/supervise"),
            Some(KEY),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        sup.wait_for_message("the supervisor's BYE", Duration::from_secs(5), |m| {
            !m.sent && m.method() == Some("BYE")
        });

        // ... the second one's phone called in (an inbound dialog) and waits in a plan; it
        // hangs up itself 5 s after its answer (after it intercepted the call, below).
        let mut phone = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
            .service("600")
            .set("rtp_port", sup2_rtp.port())
            .set("hangup_after_ms", 5000)
            .timeout_s(90)
            .spawn();
        wait_answered(&mut phone, &sup2_rtp);
        sup2 = Some(phone);
        let calls = http::json(
            server.http_port(),
            "GET",
            "/v1/calls?number=600",
            Some(KEY),
            None,
        )
        .json();
        let lobby_call = calls[0]["id"].as_str().expect("the lobby call").to_string();
        wait_call_answered(&server, &lobby_call);
        s.spawn(|| sup2_rtp.send_pcm(&sine(SUPERVISOR_HZ, 4.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(300));
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "whisper", "supervisor": format!("{lobby_call}.0")}),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let (from, to) = talk_window();
        windows.push(("whisper", from, to));
        // It takes the agent's place; when it hangs up, the call ends as the agent's hang-up
        // would have ended it (the moved leg reports to the bridge now).
        let r = supervise(&server, &id, serde_json::json!({"mode": "intercept"}));
        assert_eq!(r.status, 200, "{}", r.describe());
        agent.wait_for_message("the agent's BYE", Duration::from_secs(5), |m| {
            !m.sent && m.method() == Some("BYE")
        });
        customer.wait_for_message(
            "the customer's BYE once the supervisor hung up",
            Duration::from_secs(10),
            |m| !m.sent && m.method() == Some("BYE"),
        );
        let lobby = server.wait_for_cdr("the lobby call's CDR", |c| c.call_id == lobby_call);
        assert_eq!(lobby.hangup_by, "moved", "{}", cdr_text(&lobby));
    });
    let sup2 = sup2.expect("the second supervisor's phone");
    customer.wait().assert_success(&server.log_tail());
    agent.wait().assert_success(&server.log_tail());
    sup.wait().assert_success(&server.log_tail());
    sup2.wait().assert_success(&server.log_tail());

    for (name, from, to) in &windows {
        let at_customer = customer_rtp.heard(*from, *to);
        let at_agent = agent_rtp.heard(*from, *to);
        let at_sup = if *name == "whisper" {
            sup2_rtp.heard(*from, *to)
        } else {
            sup_rtp.heard(*from, *to)
        };
        let ctx = || {
            format!(
                "{name}\n customer: {}\n agent: {}\n supervisor: {}\n{}",
                levels(&at_customer),
                levels(&at_agent),
                levels(&at_sup),
                server.log_tail()
            )
        };
        println!("{}", ctx().lines().take(4).collect::<Vec<_>>().join("\n"));
        let hears = |pcm: &[i16], hz: f64| tone_amplitude(pcm, hz) > HEARD;
        let silent = |pcm: &[i16], hz: f64| tone_amplitude(pcm, hz) < SILENT;
        // The supervisor hears both parties in every mode, and they still hear each other.
        assert!(
            hears(&at_sup, CUSTOMER_HZ) && hears(&at_sup, AGENT_HZ),
            "{}",
            ctx()
        );
        assert!(
            hears(&at_customer, AGENT_HZ) && hears(&at_agent, CUSTOMER_HZ),
            "{}",
            ctx()
        );
        match *name {
            "listen" => assert!(
                silent(&at_customer, SUPERVISOR_HZ) && silent(&at_agent, SUPERVISOR_HZ),
                "{}",
                ctx()
            ),
            "whisper" => assert!(
                hears(&at_agent, SUPERVISOR_HZ) && silent(&at_customer, SUPERVISOR_HZ),
                "{}",
                ctx()
            ),
            _ => assert!(
                hears(&at_customer, SUPERVISOR_HZ) && hears(&at_agent, SUPERVISOR_HZ),
                "{}",
                ctx()
            ),
        }
    }
    let cdr = server.wait_for_cdr("the supervised call's CDR", |c| c.call_id == id);
    assert_eq!(cdr.hangup_by, "callee", "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs.len(), 4, "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[2].destination, "sup", "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[2].direction, "outbound", "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[3].direction, "inbound", "{}", cdr_text(&cdr));
    assert!(cdr.legs[3].answer_time.is_some(), "{}", cdr_text(&cdr));
}
