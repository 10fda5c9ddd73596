//! A call turned into a conference on the fly, against the real binary: a SIPp customer
//! bridged to a SIPp agent, then `POST /v1/calls/{id}/conference` and two participants dialled
//! through the API. All four hear the other three; when the agent (the conference's owner)
//! hangs up, the other three still hear each other; a muted participant is not heard; the
//! conference lists its present and departed participants; removing the rest ends it.

mod common;

use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "cp_conference_api_admin_key_012345";
const TONES: [(&str, f64); 4] = [
    ("customer", 500.0),
    ("agent", 1300.0),
    ("p1", 1700.0),
    ("p2", 2100.0),
];
const HEARD: f64 = 1000.0;
const SILENT: f64 = 300.0;

fn levels(pcm: &[i16]) -> String {
    let mut s = format!("{} samples;", pcm.len());
    for (who, hz) in TONES {
        s += &format!(" {who} {hz} Hz: {:.0}", tone_amplitude(pcm, hz));
    }
    s
}

fn api(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> http::HttpResponse {
    http::json(server.http_port(), method, path, Some(KEY), body.as_ref())
}

#[test]
fn a_call_turned_into_a_conference_goes_on_when_its_owner_leaves() {
    let agent_rtp = RtpPeer::new();
    let mut agent = Sipp::uas("uas_answer.xml")
        .set("rtp_port", agent_rtp.port())
        .set("answer_delay_ms", 200)
        .set("hangup_after_ms", 5000)
        .timeout_s(60)
        .spawn();
    agent.wait_listening();
    let part_rtps = [RtpPeer::new(), RtpPeer::new()];
    let mut parts = Vec::new();
    for rtp in &part_rtps {
        let mut p = Sipp::uas("uas_reinvited.xml")
            .set("rtp_port", rtp.port())
            .set("answer_delay_ms", 200)
            .timeout_s(60)
            .spawn();
        p.wait_listening();
        parts.push(p);
    }
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("p1", parts[0].port()),
        trunk("p2", parts[1].port()),
        number_with_plan("500", "b", &bridge_to_trunk("agent", "NORMAL_CLEARING"))
    );
    let server = Server::start(&prov, true);
    let (mut customer, customer_rtp) = reinvited_caller(&server, "500");
    let id = server.started_call_id();
    let name = format!("call-{id}");
    let ok =
        customer.wait_for_message("the 200 OK to the customer", Duration::from_secs(15), |m| {
            !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
        });
    customer_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP"));
    let invite = agent.wait_for_message("the INVITE to the agent", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    agent_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));

    // Not a conference yet: nothing to list; a leg that is not a party cannot own it.
    let r = api(&server, "GET", &format!("/v1/conferences/{name}"), None);
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = api(
        &server,
        "POST",
        &format!("/v1/calls/{id}/conference"),
        Some(serde_json::json!({"owner": format!("{id}.9")})),
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some("owner"), "{}", r.describe());

    let r = api(&server, "POST", &format!("/v1/calls/{id}/conference"), None);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["conference"], name.as_str(), "{}", r.describe());
    // A conference's legs take participant commands, not the call's own.
    for cmd in ["record", "conference", "answer"] {
        let r = api(&server, "POST", &format!("/v1/calls/{id}/{cmd}"), None);
        assert_eq!(r.status, 409, "{cmd}: {}", r.describe());
    }
    let mut part_legs = Vec::new();
    for (i, (p, rtp)) in parts.iter_mut().zip(&part_rtps).enumerate() {
        let r = api(
            &server,
            "POST",
            &format!("/v1/conferences/{name}/participants"),
            Some(
                serde_json::json!({"to": {"destinationType": "SIP_TRUNK", "destination": format!("p{}", i + 1)}}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.describe());
        part_legs.push(format!("{}.0", r.json()["id"].as_str().expect("id")));
        let invite = p.wait_for_message("the participant's INVITE", Duration::from_secs(10), |m| {
            !m.sent && m.method() == Some("INVITE")
        });
        rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
        p.wait_for_message("the participant's 200", Duration::from_secs(5), |m| {
            m.sent && m.status() == Some(200)
        });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = api(&server, "GET", &format!("/v1/conferences/{name}"), None).json();
        if c["present"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "four present: {c}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let rtps = [&customer_rtp, &agent_rtp, &part_rtps[0], &part_rtps[1]];
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    std::thread::scope(|s| {
        for (rtp, (_, hz)) in rtps.iter().zip(TONES) {
            s.spawn(move || rtp.send_pcm(&sine(hz, 9.0, 5000.0)));
        }
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        windows.push((
            "four",
            t + Duration::from_millis(400),
            t + Duration::from_millis(1900),
        ));
        // The agent (the owner) hangs up by itself.
        agent.wait_for_message("the agent's BYE", Duration::from_secs(10), |m| {
            m.sent && m.method() == Some("BYE")
        });
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        windows.push((
            "three",
            t + Duration::from_millis(500),
            t + Duration::from_millis(1900),
        ));
        let c = api(&server, "GET", &format!("/v1/conferences/{name}"), None).json();
        assert_eq!(c["present"], 3, "{c}");
        let agent_leg = c["participants"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["party"] == "agent").cloned())
            .unwrap_or_else(|| panic!("the agent is listed: {c}"));
        assert!(agent_leg["leftAt"].is_string(), "departed: {c}");
        assert_eq!(agent_leg["owner"], true, "{c}");
        // Mute p1: the others stop hearing it.
        let r = api(
            &server,
            "POST",
            &format!("/v1/conferences/{name}/participants/{}/mute", part_legs[0]),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let r = api(
            &server,
            "POST",
            &format!("/v1/conferences/{name}/participants/{}/mute", part_legs[0]),
            None,
        );
        assert_eq!(r.status, 409, "{}", r.describe());
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        windows.push((
            "muted",
            t + Duration::from_millis(500),
            t + Duration::from_millis(1900),
        ));
    });
    let r = api(
        &server,
        "DELETE",
        &format!("/v1/conferences/{name}/participants/nope.0"),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    // Everyone removed (the customer last): the conference is over.
    let customer_leg = format!("{id}.0");
    for leg in part_legs.iter().chain([&customer_leg]) {
        let r = api(
            &server,
            "DELETE",
            &format!("/v1/conferences/{name}/participants/{leg}"),
            None,
        );
        assert_eq!(r.status, 200, "{leg}: {}", r.describe());
    }
    customer.wait().assert_success(&server.log_tail());
    agent.wait().assert_success(&server.log_tail());
    for p in parts {
        p.wait().assert_success(&server.log_tail());
    }

    for (name, from, to) in &windows {
        for (i, (who, own)) in TONES.iter().enumerate() {
            if *name != "four" && *who == "agent" {
                continue;
            }
            let pcm = rtps[i].heard(*from, *to);
            println!("{name:6} {who:8} hears {}", levels(&pcm));
            let ctx = || {
                format!(
                    "{name}: {who} hears {}\n{}",
                    levels(&pcm),
                    server.log_tail()
                )
            };
            assert!(
                tone_amplitude(&pcm, *own) < SILENT,
                "never itself: {}",
                ctx()
            );
            for (other, hz) in TONES {
                if other == *who {
                    continue;
                }
                let expected = match *name {
                    "four" => true,
                    "three" => other != "agent",
                    _ => other != "agent" && other != "p1",
                };
                if expected {
                    assert!(tone_amplitude(&pcm, hz) > HEARD, "hears {other}: {}", ctx());
                } else {
                    assert!(tone_amplitude(&pcm, hz) < SILENT, "not {other}: {}", ctx());
                }
            }
        }
    }
    let cdr = server.wait_for_cdr("the call made a conference", |c| c.call_id == id);
    assert_eq!(cdr.legs.len(), 2, "{}", cdr_text(&cdr));
    let r = api(&server, "GET", &format!("/v1/conferences/{name}"), None);
    assert_eq!(r.status, 404, "over: {}", r.describe());
}
