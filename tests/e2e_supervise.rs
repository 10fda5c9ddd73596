//! Supervision of a connected call, against the real binary: a SIPp customer (caller) bridged
//! to a SIPp agent (callee), and a SIPp supervisor dialled in through the API, each sending its
//! own tone. In listen mode the supervisor hears both and neither hears it; in whisper mode
//! the agent hears it and the customer does not; in barge mode both do; intercept ends the
//! agent's leg and leaves the customer talking with the supervisor. Refusals are 409/400.

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

#[test]
fn a_supervisor_listens_whispers_barges_and_intercepts() {
    let (mut agent, agent_rtp) = reinvited_callee(1000);
    let (mut sup, sup_rtp) = reinvited_callee(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("sup", sup.port()),
        number_with_plan("500", "b", &bridge_to_trunk("agent", "NORMAL_CLEARING"))
    );
    let server = Server::start(&prov, true);
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
        assert_eq!(r.status, 400, "{}", r.describe());
        assert_eq!(r.error().1.as_deref(), Some("mode"), "{}", r.describe());
        let r = supervise(&server, &id, serde_json::json!({"mode": "barge"}));
        assert_eq!(r.status, 409, "{}", r.describe());
        assert_eq!(
            r.error().1.as_deref(),
            Some("supervisor"),
            "{}",
            r.describe()
        );
        let r = supervise(
            &server,
            &id,
            serde_json::json!({"mode": "listen", "supervisor": format!("{id}.1")}),
        );
        assert_eq!(r.status, 400, "{}", r.describe());

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
            if let Some(m) = mode {
                let r = supervise(&server, &id, serde_json::json!({"mode": m}));
                assert_eq!(r.status, 200, "{}", r.describe());
            }
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(2200));
            windows.push((
                name,
                t + Duration::from_millis(500),
                t + Duration::from_millis(2100),
            ));
        };
        phase("listen", None);
        phase("whisper", Some("whisper"));
        phase("barge", Some("barge"));
        let r = supervise(&server, &id, serde_json::json!({"mode": "intercept"}));
        assert_eq!(r.status, 200, "{}", r.describe());
        agent.wait_for_message("the agent's BYE", Duration::from_secs(5), |m| {
            !m.sent && m.method() == Some("BYE")
        });
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2200));
        windows.push((
            "intercept",
            t + Duration::from_millis(500),
            t + Duration::from_millis(2100),
        ));
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
