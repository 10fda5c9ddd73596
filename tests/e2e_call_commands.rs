//! Commands that change a connected call's room, against the real binary: a SIPp caller
//! bridged to a SIPp callee, each with a test RtpPeer sending its own tone, both answering the
//! server's re-INVITEs. Hold sends the held party a re-INVITE `sendonly` and music on hold (a
//! configured WAV of its own tone) while the other party stops hearing it; unhold sends
//! `sendrecv` and both hear each other again; mute silences one party for the other; a stereo
//! recording has the caller on the left channel and the callee on the right and is served by
//! `GET /v1/recordings/{id}` (with byte ranges) and listed on the CDR. Every command in the
//! wrong state is `409` naming why.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const KEY: &str = "cp_call_commands_admin_key_0123456";
const CALLER_HZ: f64 = 500.0;
const CALLEE_HZ: f64 = 1300.0;
const MUSIC_HZ: f64 = 700.0;
const HEARD: f64 = 1200.0;
const SILENT: f64 = 300.0;

fn levels(pcm: &[i16]) -> String {
    format!(
        "{} samples; caller {CALLER_HZ} Hz: {:.0}, callee {CALLEE_HZ} Hz: {:.0}, music {MUSIC_HZ} Hz: {:.0}",
        pcm.len(),
        tone_amplitude(pcm, CALLER_HZ),
        tone_amplitude(pcm, CALLEE_HZ),
        tone_amplitude(pcm, MUSIC_HZ)
    )
}

fn post(server: &Server, path: &str, body: Option<serde_json::Value>) -> http::HttpResponse {
    http::json(server.http_port(), "POST", path, Some(KEY), body.as_ref())
}

fn delete(server: &Server, path: &str) -> http::HttpResponse {
    http::json(server.http_port(), "DELETE", path, Some(KEY), None)
}

/// Asserts a `409` naming `field` and saying `why`.
fn assert_refused(r: &http::HttpResponse, field: &str, why: &str) {
    assert_eq!(r.status, 409, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some(field), "{}", r.describe());
    assert!(r.text().contains(why), "expected {why:?}: {}", r.describe());
}

/// The a= direction of an SDP body.
fn direction(sdp: &str) -> Option<&str> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .find(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
}

/// The direction of every INVITE `sipp` received, in order.
fn invite_directions(sipp: &SippResult) -> Vec<String> {
    sipp.received()
        .filter(|m| m.method() == Some("INVITE"))
        .map(|m| direction(m.body()).unwrap_or("?").to_string())
        .collect()
}

/// The o= line's session id and version.
fn origin(sdp: &str) -> Option<(String, u64)> {
    let o = sdp.lines().find_map(|l| l.trim().strip_prefix("o="))?;
    let f: Vec<&str> = o.split_whitespace().collect();
    Some((f.get(1)?.to_string(), f.get(2)?.parse().ok()?))
}

/// The n-th re-INVITE (CSeq method INVITE, sent by the server after the call's first) that
/// `sipp` received.
fn wait_reinvite(sipp: &SippProcess, who: &str, n: usize) -> TracedMessage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let invites: Vec<TracedMessage> = sipp
            .messages_so_far()
            .into_iter()
            .filter(|m| !m.sent && m.method() == Some("INVITE"))
            .collect();
        // The callee's first INVITE is the call itself; the caller received none before.
        let skip = usize::from(who == "callee");
        if let Some(m) = invites.get(skip + n - 1) {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{who} got no re-INVITE #{n} (INVITEs so far: {})",
            invites.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hold_mute_and_a_stereo_recording_of_a_connected_call() {
    let music = std::env::temp_dir().join(format!(
        "callplane-e2e-moh-{}-{}.wav",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&music, pcm16_wav(8000, 1, &sine(MUSIC_HZ, 2.0, 6000.0))).expect("WAV");

    let callee_rtp = RtpPeer::new();
    let mut callee = Sipp::uas("uas_reinvited.xml")
        .set("rtp_port", callee_rtp.port())
        // Long enough that the first commands find the call not connected yet.
        .set("answer_delay_ms", 1500)
        .timeout_s(90)
        .spawn();
    callee.wait_listening();
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}",
        tenant_with_prompts(),
        trunk("callee", callee.port()),
        number_with_plan("500", "b", &bridge_to_trunk("callee", "NORMAL_CLEARING"))
    );
    let server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: format!("musicOnHold = {:?}\n", music.to_string_lossy()),
            ..ServerOptions::default()
        },
    );
    let (mut caller, caller_rtp) = reinvited_caller(&server, "500");
    let id = server.started_call_id();
    let call = |p: &str| format!("/v1/calls/{id}{p}");

    // Ringing: nothing to hold, mute or record yet.
    let r = post(&server, &call("/hold"), None);
    assert_refused(&r, "state", "not connected");
    let r = post(&server, &call("/record"), None);
    assert_refused(&r, "state", "not connected");

    let ok = caller.wait_for_message("the 200 OK to the caller", Duration::from_secs(15), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    let invite = callee.wait_for_message("the INVITE to the callee", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    caller_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP in the 200 OK"));
    callee_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP in the INVITE"));
    let (caller_session, first_version) = origin(ok.body()).expect("o= in the 200 OK");

    let info = http::json(server.http_port(), "GET", &call(""), Some(KEY), None).json();
    let callee_leg = info["bridgedTo"]
        .as_str()
        .unwrap_or_else(|| panic!("not bridged: {info}"))
        .to_string();

    let start = Instant::now();
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    let mut recording_id = String::new();
    let mut recorded = (start, start);
    std::thread::scope(|s| {
        s.spawn(|| caller_rtp.send_pcm(&sine(CALLER_HZ, 15.0, 6000.0)));
        s.spawn(|| callee_rtp.send_pcm(&sine(CALLEE_HZ, 15.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(500));

        // Nothing to undo yet; a leg that is not a party; an unknown leg.
        assert_refused(
            &post(&server, &call("/unhold"), None),
            "state",
            "not on hold",
        );
        assert_refused(&post(&server, &call("/unmute"), None), "state", "not muted");
        assert_refused(
            &delete(&server, &call("/record")),
            "state",
            "not being recorded",
        );
        let r = post(
            &server,
            &call("/mute"),
            Some(serde_json::json!({"leg": format!("{id}.7")})),
        );
        assert_eq!(r.status, 404, "{}", r.describe());
        assert_eq!(r.error().1.as_deref(), Some("leg"), "{}", r.describe());
        let r = post(
            &server,
            &call("/hold"),
            Some(serde_json::json!({"leg": "nonsense"})),
        );
        assert_eq!(r.status, 400, "{}", r.describe());

        let r = post(
            &server,
            &call("/record"),
            Some(serde_json::json!({"stereo": true})),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        recording_id = r.json()["recording"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no recording id: {}", r.describe()))
            .to_string();
        assert_eq!(r.json()["recording"]["stereo"], true, "{}", r.describe());
        recorded.0 = Instant::now();
        assert_refused(
            &post(&server, &call("/record"), None),
            "state",
            "already being recorded",
        );
        std::thread::sleep(Duration::from_millis(1000));
        windows.push(("before", start + Duration::from_millis(300), Instant::now()));

        // Hold the caller: music for it, silence for the callee.
        let r = post(&server, &call("/hold"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
        let v = r.json();
        assert_eq!(v["legs"][0]["held"], true, "{v}");
        assert_eq!(v["state"], "held", "{v}");
        let held = Instant::now();
        assert_refused(
            &post(&server, &call("/hold"), None),
            "state",
            "already on hold",
        );
        std::thread::sleep(Duration::from_millis(2500));
        windows.push((
            "held",
            held + Duration::from_millis(500),
            held + Duration::from_millis(2400),
        ));

        let r = post(&server, &call("/unhold"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json()["legs"][0]["held"], false, "{}", r.describe());
        assert_eq!(r.json()["state"], "answered", "{}", r.describe());
        let resumed = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        windows.push((
            "resumed",
            resumed + Duration::from_millis(500),
            resumed + Duration::from_millis(1900),
        ));

        // Mute the callee: the caller stops hearing it, the callee still hears the caller.
        let r = post(
            &server,
            &call("/mute"),
            Some(serde_json::json!({"leg": callee_leg})),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json()["legs"][1]["muted"], true, "{}", r.describe());
        let muted = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        windows.push((
            "muted",
            muted + Duration::from_millis(400),
            muted + Duration::from_millis(1900),
        ));
        let r = post(
            &server,
            &call("/unmute"),
            Some(serde_json::json!({"leg": callee_leg})),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let unmuted = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        windows.push((
            "unmuted",
            unmuted + Duration::from_millis(400),
            unmuted + Duration::from_millis(1400),
        ));

        let r = delete(&server, &call("/record"));
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(r.json()["recording"].is_null(), "{}", r.describe());
        recorded.1 = Instant::now();
        let r = post(&server, &call("/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    let _ = std::fs::remove_file(&music);

    // The re-INVITEs the caller got: sendonly, then sendrecv, of the same session with
    // growing versions; the callee got none.
    let hold = wait_reinvite(&caller, "caller", 1);
    let resume = wait_reinvite(&caller, "caller", 2);
    assert_eq!(direction(hold.body()), Some("sendonly"), "{}", hold.body());
    assert_eq!(
        direction(resume.body()),
        Some("sendrecv"),
        "{}",
        resume.body()
    );
    let (s1, v1) = origin(hold.body()).expect("o= in the hold re-INVITE");
    let (s2, v2) = origin(resume.body()).expect("o= in the resume re-INVITE");
    assert_eq!(
        (&s1, &s2),
        (&caller_session, &caller_session),
        "same session"
    );
    assert!(
        first_version < v1 && v1 < v2,
        "versions {first_version} {v1} {v2}"
    );

    caller.wait().assert_success(&server.log_tail());
    let callee = callee.wait();
    callee.assert_success(&server.log_tail());
    assert_eq!(
        callee
            .received()
            .filter(|m| m.method() == Some("INVITE"))
            .count(),
        1,
        "the callee was never re-INVITEd"
    );

    let ctx = |what: &str, pcm: &[i16]| format!("{what}: {}\n{}", levels(pcm), server.log_tail());
    for (name, from, to) in &windows {
        let at_caller = caller_rtp.heard(*from, *to);
        let at_callee = callee_rtp.heard(*from, *to);
        println!("{name:8} caller hears {}", levels(&at_caller));
        println!("{name:8} callee hears {}", levels(&at_callee));
        assert!(at_caller.len() > 4000, "{}", ctx(name, &at_caller));
        assert!(at_callee.len() > 4000, "{}", ctx(name, &at_callee));
        let caller_hears_callee = tone_amplitude(&at_caller, CALLEE_HZ) > HEARD;
        let callee_hears_caller = tone_amplitude(&at_callee, CALLER_HZ) > HEARD;
        match *name {
            "held" => {
                assert!(
                    tone_amplitude(&at_caller, MUSIC_HZ) > HEARD,
                    "held caller hears music: {}",
                    ctx(name, &at_caller)
                );
                assert!(
                    tone_amplitude(&at_caller, CALLEE_HZ) < SILENT,
                    "held caller does not hear the callee: {}",
                    ctx(name, &at_caller)
                );
                assert!(
                    tone_amplitude(&at_callee, CALLER_HZ) < SILENT
                        && tone_amplitude(&at_callee, MUSIC_HZ) < SILENT,
                    "the callee hears neither the held caller nor its music: {}",
                    ctx(name, &at_callee)
                );
            }
            "muted" => {
                assert!(
                    tone_amplitude(&at_caller, CALLEE_HZ) < SILENT,
                    "the muted callee is not heard: {}",
                    ctx(name, &at_caller)
                );
                assert!(callee_hears_caller, "{}", ctx(name, &at_callee));
            }
            _ => {
                assert!(caller_hears_callee, "{}", ctx(name, &at_caller));
                assert!(callee_hears_caller, "{}", ctx(name, &at_callee));
                assert!(
                    tone_amplitude(&at_caller, MUSIC_HZ) < SILENT,
                    "{}",
                    ctx(name, &at_caller)
                );
            }
        }
    }

    // The recording: on the CDR, and served whole and by range.
    let cdr = server.wait_for_cdr("the call's CDR", |c| c.call_id == id);
    assert_eq!(cdr.hangup_by, "api", "{}", cdr_text(&cdr));
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let page = http::json(server.http_port(), "GET", "/v1/cdrs", Some(KEY), None).json();
        let recs = page["items"][0]["recordings"].clone();
        if recs.as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline {
            break recs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed[0]["id"], recording_id.as_str(), "{listed}");
    assert_eq!(listed[0]["channels"], 2, "{listed}");
    assert!(listed[0].get("path").is_none(), "no server path: {listed}");
    let wanted_ms = (recorded.1 - recorded.0).as_millis() as i64;
    let ms = listed[0]["durationMs"].as_i64().unwrap_or(0);
    assert!(
        (ms - wanted_ms).abs() < 600,
        "recorded {ms} ms over {wanted_ms} ms"
    );
    let path = format!("/v1/recordings/{recording_id}");
    let auth = format!("Bearer {KEY}");
    let whole = http::request(
        server.http_port(),
        "GET",
        &path,
        &[("Authorization", auth.as_str())],
        b"",
    );
    assert_eq!(whole.status, 200, "{}", whole.describe());
    assert_eq!(whole.header("content-type"), Some("audio/wav"));
    assert_eq!(
        whole.body.len() as i64,
        listed[0]["sizeBytes"].as_i64().unwrap_or(-1)
    );
    assert_eq!(
        u16::from_le_bytes([whole.body[22], whole.body[23]]),
        2,
        "stereo"
    );
    let samples: Vec<i16> = whole.body[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    println!("recording left:  {}", levels(&left));
    println!("recording right: {}", levels(&right));
    assert!(
        tone_amplitude(&left, CALLER_HZ) > 600.0 && tone_amplitude(&left, CALLEE_HZ) < SILENT,
        "left is the caller: {}",
        levels(&left)
    );
    assert!(
        tone_amplitude(&right, CALLEE_HZ) > 600.0 && tone_amplitude(&right, CALLER_HZ) < SILENT,
        "right is the callee: {}",
        levels(&right)
    );
    assert!(
        tone_amplitude(&left, MUSIC_HZ) < SILENT,
        "no music recorded"
    );
    let part = http::request(
        server.http_port(),
        "GET",
        &path,
        &[("Authorization", auth.as_str()), ("Range", "bytes=0-43")],
        b"",
    );
    assert_eq!(part.status, 206, "{}", part.describe());
    assert_eq!(part.body, whole.body[..44].to_vec());
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 0-43/{}", whole.body.len()).as_str())
    );
    let r = http::request(
        server.http_port(),
        "GET",
        &path,
        &[
            ("Authorization", auth.as_str()),
            ("Range", "bytes=99999999-"),
        ],
        b"",
    );
    assert_eq!(r.status, 416, "{}", r.describe());
    assert_eq!(
        r.error(),
        (
            "range_not_satisfiable".to_string(),
            Some("Range".to_string())
        ),
        "the error shape of every answer: {}",
        r.describe()
    );
    let r = http::request(
        server.http_port(),
        "GET",
        "/v1/recordings/no-such-recording",
        &[("Authorization", auth.as_str())],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = http::request(server.http_port(), "GET", &path, &[], b"");
    assert_eq!(r.status, 401, "{}", r.describe());

    // The bus saw it all (counted on /metrics).
    for series in [
        "callplane_call_events_total{type=\"call.held\"}",
        "callplane_call_events_total{type=\"call.unheld\"}",
        "callplane_call_events_total{type=\"call.muted\"}",
        "callplane_call_events_total{type=\"call.unmuted\"}",
    ] {
        assert!(server.metric(series) >= 1.0, "{series} not counted");
    }
    assert!(
        server.metric("callplane_call_events_total{type=\"call.recording\"}") >= 2.0,
        "recording started and stopped"
    );
}

/// A caller bridged to an agent is transferred blind to a target: the agent gets a BYE, the
/// target rings and answers, and the caller and the target hear each other. A transfer to a
/// busy target continues the plan after the BRIDGE block (`bridge_result=busy`).
#[test]
fn a_blind_transfer_connects_the_caller_to_the_target_and_releases_the_agent() {
    const AGENT_HZ: f64 = 900.0;
    const TARGET_HZ: f64 = 1700.0;
    let (mut agent, agent_rtp) = reinvited_callee(1200);
    let (mut target, target_rtp) = reinvited_callee(300);
    let mut busy = Sipp::uas("uas_busy.xml").timeout_s(60).spawn();
    busy.wait_listening();
    let mut agent2 = Sipp::uas("uas_reinvited.xml")
        .set("rtp_port", free_port())
        .set("answer_delay_ms", 100)
        .timeout_s(60)
        .spawn();
    agent2.wait_listening();
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}{}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("target", target.port()),
        trunk("busy", busy.port()),
        trunk("agent2", agent2.port()),
        number_with_plan("500", "b", &bridge_to_trunk("agent", "CALL_REJECTED")),
        number_with_plan("501", "b2", &bridge_to_trunk("agent2", "CALL_REJECTED"))
    );
    let server = Server::start(&prov, true);
    let (mut caller, caller_rtp) = reinvited_caller(&server, "500");
    let id = server.started_call_id();
    let transfer =
        |body: serde_json::Value| post(&server, &format!("/v1/calls/{id}/transfer"), Some(body));
    let to_target = serde_json::json!({"destinationType": "SIP_TRUNK", "destination": "target"});

    // Ringing: nothing to transfer yet.
    assert_refused(
        &transfer(serde_json::json!({"to": to_target})),
        "state",
        "not connected",
    );
    let ok = caller.wait_for_message("the 200 OK to the caller", Duration::from_secs(15), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    let invite = agent.wait_for_message("the INVITE to the agent", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    caller_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP"));
    agent_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));

    let start = Instant::now();
    let mut window = (start, start);
    std::thread::scope(|s| {
        s.spawn(|| caller_rtp.send_pcm(&sine(CALLER_HZ, 8.0, 6000.0)));
        s.spawn(|| agent_rtp.send_pcm(&sine(AGENT_HZ, 8.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(800));
        // Refusals: an attended transfer, a bad destination.
        let r = transfer(serde_json::json!({"consultCallId": "no-such-call"}));
        assert_eq!(r.status, 404, "{}", r.describe());
        assert_eq!(
            r.error().1.as_deref(),
            Some("consultCallId"),
            "{}",
            r.describe()
        );
        let r = transfer(serde_json::json!({"to": to_target, "consultCallId": id}));
        assert_eq!(r.status, 400, "{}", r.describe());
        let r = transfer(serde_json::json!({"consultCallId": id}));
        assert_refused(&r, "consultCallId", "the call itself");
        let r = transfer(serde_json::json!({"to": {"destinationType": "FAX", "destination": "1"}}));
        assert_eq!(r.status, 400, "{}", r.describe());
        assert_eq!(
            r.error().1.as_deref(),
            Some("to.destinationType"),
            "{}",
            r.describe()
        );

        // The agent held the caller before transferring it: the transfer resumes it.
        let r = post(&server, &format!("/v1/calls/{id}/hold"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
        let r = transfer(serde_json::json!({"to": to_target}));
        assert_eq!(r.status, 200, "{}", r.describe());
        let invite =
            target.wait_for_message("the INVITE to the target", Duration::from_secs(10), |m| {
                !m.sent && m.method() == Some("INVITE")
            });
        target_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
        target.wait_for_message("the target's 200 OK", Duration::from_secs(5), |m| {
            m.sent && m.status() == Some(200)
        });
        s.spawn(|| target_rtp.send_pcm(&sine(TARGET_HZ, 4.0, 6000.0)));
        window = talk_window();
        let info = call_json(&server, KEY, &id);
        assert_eq!(info["legs"].as_array().map(Vec::len), Some(3), "{info}");
        assert_eq!(info["legs"][1]["state"], "ended", "{info}");
        assert_eq!(info["bridgedTo"], format!("{id}.2"), "{info}");
        assert_eq!(info["variables"]["transferred_to"], "target", "{info}");
        let r = post(&server, &format!("/v1/calls/{id}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    let agent = agent.wait();
    agent.assert_success(&server.log_tail());
    assert!(
        agent.received_request("BYE").is_some(),
        "the agent got a BYE: {}",
        agent.report()
    );
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    assert_eq!(
        invite_directions(&caller),
        ["sendonly", "sendrecv"],
        "held, then resumed by the transfer"
    );
    target.wait().assert_success(&server.log_tail());
    let at_caller = caller_rtp.heard(window.0, window.1);
    let at_target = target_rtp.heard(window.0, window.1);
    println!("caller hears {}", levels(&at_caller));
    println!("target hears {}", levels(&at_target));
    assert!(
        tone_amplitude(&at_caller, TARGET_HZ) > HEARD,
        "caller hears the target: {} / {:.0}\n{}",
        levels(&at_caller),
        tone_amplitude(&at_caller, TARGET_HZ),
        server.log_tail()
    );
    assert!(
        tone_amplitude(&at_caller, AGENT_HZ) < SILENT,
        "not the agent any more"
    );
    assert!(
        tone_amplitude(&at_target, CALLER_HZ) > HEARD,
        "target hears the caller: {}",
        levels(&at_target)
    );
    let cdr = server.wait_for_cdr("the transferred call's CDR", |c| c.call_id == id);
    assert_eq!(cdr.legs.len(), 3, "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[1].destination, "agent", "{}", cdr_text(&cdr));
    assert!(cdr.legs[1].answer_time.is_some(), "{}", cdr_text(&cdr));
    assert_eq!(cdr.legs[2].destination, "target", "{}", cdr_text(&cdr));
    assert!(cdr.legs[2].answer_time.is_some(), "{}", cdr_text(&cdr));
    assert!(
        server.metric("callplane_call_events_total{type=\"call.transferred\"}") >= 1.0,
        "call.transferred counted"
    );
    // A call that ended: commands on it are 409 for a while, not 404.
    let r = transfer(serde_json::json!({"to": to_target}));
    assert_refused(&r, "state", "has ended");

    // A transfer to a busy target: the plan goes on after the BRIDGE (here: CALL_REJECTED).
    let mut caller2 = Sipp::uac("uac_reinvited.xml", server.sip_addr())
        .service("501")
        .set("rtp_port", free_port())
        .timeout_s(60)
        .spawn();
    caller2.wait_for_message("the 200 OK to caller 2", Duration::from_secs(15), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    let calls = http::json(server.http_port(), "GET", "/v1/calls", Some(KEY), None).json();
    let id2 = calls[0]["id"]
        .as_str()
        .expect("the second call")
        .to_string();
    let r = post(
        &server,
        &format!("/v1/calls/{id2}/transfer"),
        Some(serde_json::json!({"to": {"destinationType": "SIP_TRUNK", "destination": "busy"}})),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    caller2.wait().assert_success(&server.log_tail());
    agent2.wait().assert_success(&server.log_tail());
    busy.wait().assert_success(&server.log_tail());
    let cdr = server.wait_for_cdr("the busy transfer's CDR", |c| c.call_id == id2);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("busy"),
        "{}",
        cdr_text(&cdr)
    );
}

/// A call placed through the API rings the agent's phone first and then bridges it to the
/// customer (click-to-dial): the agent is leg 0. A blind transfer from leg 0 hangs the agent
/// up and hands the customer, still answered, to a new call that dials the target; customer
/// and target hear each other.
#[test]
fn a_blind_transfer_from_the_first_leg_hands_the_callee_to_a_new_call() {
    const AGENT_HZ: f64 = 900.0;
    const CUSTOMER_HZ: f64 = CALLER_HZ;
    const TARGET_HZ: f64 = 1700.0;
    let (mut agent, agent_rtp) = reinvited_callee(200);
    let (mut customer, customer_rtp) = reinvited_callee(1500);
    let (mut target, target_rtp) = reinvited_callee(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("customer", customer.port()),
        trunk("target", target.port()),
    );
    let server = Server::start(&prov, true);
    let r = post(
        &server,
        "/v1/calls",
        Some(serde_json::json!({
            "tenant": "t1",
            "to": {"destinationType": "SIP_TRUNK", "destination": "agent"},
            "callerId": "+4930200",
            "blocks": [{"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL", "destinations": [
                {"destinationType": "SIP_TRUNK", "destination": "customer", "timeout": 15}]}]
        })),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let transfer =
        |body: serde_json::Value| post(&server, &format!("/v1/calls/{id}/transfer"), Some(body));
    let to_target = serde_json::json!({"destinationType": "SIP_TRUNK", "destination": "target"});
    wait_invited(&mut agent, &agent_rtp);
    customer.wait_for_message("the INVITE to the customer", Duration::from_secs(10), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    // The customer still rings: nothing to hand over.
    let r = transfer(serde_json::json!({"to": to_target, "from": format!("{id}.0")}));
    assert_refused(&r, "state", "not connected");
    wait_invited(&mut customer, &customer_rtp);
    wait_bridged(&server, KEY, &id, Duration::from_secs(10));

    let mut window = (Instant::now(), Instant::now());
    let mut new_call = String::new();
    std::thread::scope(|s| {
        s.spawn(|| agent_rtp.send_pcm(&sine(AGENT_HZ, 7.0, 6000.0)));
        s.spawn(|| customer_rtp.send_pcm(&sine(CUSTOMER_HZ, 7.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(500));
        // An attended transfer from leg 0 is not built.
        let r = transfer(
            serde_json::json!({"consultCallId": id.clone() + "x", "from": format!("{id}.0")}),
        );
        assert_eq!(r.status, 404, "{}", r.describe());
        // The agent held the customer first: the hand-over resumes it.
        let r = post(
            &server,
            &format!("/v1/calls/{id}/hold"),
            Some(serde_json::json!({"leg": format!("{id}.1")})),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        wait_reinvite(&customer, "callee", 1);
        std::thread::sleep(Duration::from_millis(200));
        let r = transfer(serde_json::json!({"to": to_target, "from": format!("{id}.0")}));
        assert_eq!(r.status, 200, "{}", r.describe());
        let answer = r.json();
        new_call = answer["variables"]["transferred_to_call"]
            .as_str()
            .unwrap_or_else(|| panic!("no new call named: {answer}"))
            .to_string();
        agent.wait_for_message("the agent's BYE", Duration::from_secs(5), |m| {
            !m.sent && m.method() == Some("BYE")
        });
        wait_invited(&mut target, &target_rtp);
        s.spawn(|| target_rtp.send_pcm(&sine(TARGET_HZ, 4.0, 6000.0)));
        window = talk_window();
        let info = call_json(&server, KEY, &new_call);
        assert_eq!(info["legs"][0]["destination"], "customer", "{info}");
        assert_eq!(info["legs"][0]["state"], "answered", "{info}");
        assert_eq!(info["legs"][1]["destination"], "target", "{info}");
        assert_eq!(info["bridgedTo"], format!("{new_call}.1"), "{info}");
        assert_eq!(info["variables"]["transferred_from_call"], id, "{info}");
        let r = post(&server, &format!("/v1/calls/{new_call}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    agent.wait().assert_success(&server.log_tail());
    let customer = customer.wait();
    customer.assert_success(&server.log_tail());
    assert_eq!(
        invite_directions(&customer),
        ["sendrecv", "sendonly", "sendrecv"],
        "called, held, then resumed by the hand-over"
    );
    target.wait().assert_success(&server.log_tail());
    let at_customer = customer_rtp.heard(window.0, window.1);
    let at_target = target_rtp.heard(window.0, window.1);
    println!("customer hears {}", levels(&at_customer));
    println!("target hears {}", levels(&at_target));
    assert!(
        tone_amplitude(&at_customer, TARGET_HZ) > HEARD,
        "the customer hears the target: {:.0}\n{}",
        tone_amplitude(&at_customer, TARGET_HZ),
        server.log_tail()
    );
    assert!(
        tone_amplitude(&at_customer, AGENT_HZ) < SILENT,
        "not the agent any more: {:.0}",
        tone_amplitude(&at_customer, AGENT_HZ)
    );
    assert!(
        tone_amplitude(&at_target, CUSTOMER_HZ) > HEARD,
        "the target hears the customer: {}",
        levels(&at_target)
    );
    let old = server.wait_for_cdr("the transferring call's CDR", |c| c.call_id == id);
    assert_eq!(old.hangup_by, "api", "{}", cdr_text(&old));
    assert_eq!(old.legs.len(), 2, "{}", cdr_text(&old));
    assert_eq!(
        old.variables.get("transferred_to_call"),
        Some(&new_call),
        "{}",
        cdr_text(&old)
    );
    let new = server.wait_for_cdr("the new call's CDR", |c| c.call_id == new_call);
    assert_eq!(new.legs.len(), 2, "{}", cdr_text(&new));
    assert_eq!(new.legs[0].destination, "customer", "{}", cdr_text(&new));
    assert_eq!(new.legs[0].direction, "outbound", "{}", cdr_text(&new));
    assert!(new.legs[1].answer_time.is_some(), "{}", cdr_text(&new));
    assert_eq!(new.hangup_by, "api", "{}", cdr_text(&new));
    assert!(!new.sip_call_id.is_empty(), "{}", cdr_text(&new));
}

/// An attended transfer from leg 0: the agent (leg 0 of a call placed through the API) talks
/// with a customer, consults a target over its second line (a callback call), and transfers
/// from its own leg: the customer goes, answered, to a new call connected to the target, which
/// moves there from the consultation call; both of the agent's lines get a BYE.
#[test]
fn an_attended_transfer_from_the_first_leg_joins_the_callee_and_the_consulted_party() {
    const AGENT_HZ: f64 = 900.0;
    const CUSTOMER_HZ: f64 = CALLER_HZ;
    const TARGET_HZ: f64 = 1700.0;
    let (mut agent, agent_rtp) = reinvited_callee(200);
    let (mut customer, customer_rtp) = reinvited_callee(300);
    let (mut line2, line2_rtp) = reinvited_callee(200);
    let (mut target, target_rtp) = reinvited_callee(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("customer", customer.port()),
        trunk("line2", line2.port()),
        trunk("target", target.port()),
    );
    let server = Server::start(&prov, true);
    let connected = |id: &str| wait_bridged(&server, KEY, id, Duration::from_secs(10));
    let trunk_dest = |name: &str| json!({"destinationType": "SIP_TRUNK", "destination": name});
    let r = post(
        &server,
        "/v1/calls",
        Some(json!({
            "tenant": "t1",
            "to": trunk_dest("agent"),
            "callerId": "+4930200",
            "blocks": [{"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL",
                        "destinations": [trunk_dest("customer")]}]
        })),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let id = r.json()["id"].as_str().expect("id").to_string();
    wait_invited(&mut agent, &agent_rtp);
    wait_invited(&mut customer, &customer_rtp);
    connected(&id);
    // The consultation: the agent's second line, then the target.
    let r = post(
        &server,
        "/v1/calls/callback",
        Some(json!({"tenant": "t1", "first": trunk_dest("line2"), "second": trunk_dest("target")})),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let consult = r.json()["id"].as_str().expect("id").to_string();
    wait_invited(&mut line2, &line2_rtp);
    wait_invited(&mut target, &target_rtp);
    connected(&consult);

    let mut window = (Instant::now(), Instant::now());
    let mut new_call = String::new();
    std::thread::scope(|s| {
        s.spawn(|| agent_rtp.send_pcm(&sine(AGENT_HZ, 6.0, 6000.0)));
        s.spawn(|| customer_rtp.send_pcm(&sine(CUSTOMER_HZ, 6.0, 6000.0)));
        s.spawn(|| target_rtp.send_pcm(&sine(TARGET_HZ, 6.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(500));
        let r = post(
            &server,
            &format!("/v1/calls/{id}/transfer"),
            Some(json!({"consultCallId": consult, "from": format!("{id}.0")})),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        new_call = r.json()["variables"]["transferred_to_call"]
            .as_str()
            .unwrap_or_else(|| panic!("no new call named: {}", r.describe()))
            .to_string();
        for (who, sipp) in [("agent", &mut agent), ("its second line", &mut line2)] {
            sipp.wait_for_message(&format!("the BYE to {who}"), Duration::from_secs(5), |m| {
                !m.sent && m.method() == Some("BYE")
            });
        }
        window = talk_window();
        let info = call_json(&server, KEY, &new_call);
        assert_eq!(info["legs"][0]["destination"], "customer", "{info}");
        assert_eq!(info["legs"][1]["destination"], "target", "{info}");
        assert_eq!(info["legs"][1]["state"], "answered", "{info}");
        assert_eq!(info["bridgedTo"], format!("{new_call}.1"), "{info}");
        let r = post(&server, &format!("/v1/calls/{new_call}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    for sipp in [agent, customer, line2, target] {
        sipp.wait().assert_success(&server.log_tail());
    }
    let at_customer = customer_rtp.heard(window.0, window.1);
    let at_target = target_rtp.heard(window.0, window.1);
    let amp = |pcm: &[i16], hz: f64| tone_amplitude(pcm, hz);
    assert!(
        amp(&at_customer, TARGET_HZ) > HEARD && amp(&at_customer, AGENT_HZ) < SILENT,
        "the customer hears the target, not the agent: target {:.0}, agent {:.0}\n{}",
        amp(&at_customer, TARGET_HZ),
        amp(&at_customer, AGENT_HZ),
        server.log_tail()
    );
    assert!(
        amp(&at_target, CUSTOMER_HZ) > HEARD,
        "the target hears the customer: {:.0}",
        amp(&at_target, CUSTOMER_HZ)
    );
    let old = server.wait_for_cdr("the transferring call's CDR", |c| c.call_id == id);
    assert_eq!(old.hangup_by, "api", "{}", cdr_text(&old));
    let new = server.wait_for_cdr("the new call's CDR", |c| c.call_id == new_call);
    assert_eq!(new.legs.len(), 2, "{}", cdr_text(&new));
    assert_eq!(new.legs[1].destination, "target", "{}", cdr_text(&new));
    assert!(new.legs[1].answer_time.is_some(), "{}", cdr_text(&new));
    assert_eq!(
        new.variables.get("transferred_from_call"),
        Some(&id),
        "{}",
        cdr_text(&new)
    );
}

/// A call in its plan (collecting digits) is redirected to a target: the collection stops,
/// the caller is bridged to the target, and they hear each other.
#[test]
fn a_redirect_sends_a_call_in_its_plan_to_another_destination() {
    const TARGET_HZ: f64 = 1700.0;
    let (mut target, target_rtp) = reinvited_callee(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}",
        tenant_with_prompts(),
        trunk("target", target.port()),
        number_with_plan(
            "600",
            "ivr",
            r##"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 4, maxDigits = 4, maxTries = 1, timeout = 60 },
  { blockType = "HANGUP", hangupCause = "CALL_REJECTED" },"##
        )
    );
    let server = Server::start(&prov, true);
    let (mut caller, caller_rtp) = reinvited_caller(&server, "600");
    let id = server.started_call_id();
    wait_answered(&mut caller, &caller_rtp);
    let r = post(
        &server,
        &format!("/v1/calls/{id}/redirect"),
        Some(
            serde_json::json!({"to": {"destinationType": "SIP_TRUNK", "destination": "target", "timeout": 10}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let invite =
        target.wait_for_message("the INVITE to the target", Duration::from_secs(10), |m| {
            !m.sent && m.method() == Some("INVITE")
        });
    target_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
    target.wait_for_message("the target's 200 OK", Duration::from_secs(5), |m| {
        m.sent && m.status() == Some(200)
    });
    let connected = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| caller_rtp.send_pcm(&sine(CALLER_HZ, 3.0, 6000.0)));
        s.spawn(|| target_rtp.send_pcm(&sine(TARGET_HZ, 3.0, 6000.0)));
    });
    let window = (
        connected + Duration::from_millis(600),
        connected + Duration::from_millis(2800),
    );
    let r = post(&server, &format!("/v1/calls/{id}/hangup"), None);
    assert_eq!(r.status, 200, "{}", r.describe());
    caller.wait().assert_success(&server.log_tail());
    target.wait().assert_success(&server.log_tail());
    let at_caller = caller_rtp.heard(window.0, window.1);
    let at_target = target_rtp.heard(window.0, window.1);
    assert!(
        tone_amplitude(&at_caller, TARGET_HZ) > HEARD,
        "caller hears the target: {}\n{}",
        levels(&at_caller),
        server.log_tail()
    );
    assert!(
        tone_amplitude(&at_target, CALLER_HZ) > HEARD,
        "target hears the caller: {}",
        levels(&at_target)
    );
    let cdr = server.wait_for_cdr("the redirected call's CDR", |c| c.call_id == id);
    assert_eq!(
        cdr.variables.get("transferred_to").map(String::as_str),
        Some("target")
    );
    assert_eq!(cdr.variables.get("pin"), None, "the collection was stopped");
    assert_eq!(cdr.hangup_by, "api", "{}", cdr_text(&cdr));
}

/// The parties of an attended transfer: a customer (caller) bridged to an agent, the agent's
/// consultation call (a callback from the agent's second line to a target), all sending their
/// own tones and answering re-INVITEs.
struct Consultation {
    server: Server,
    customer: SippProcess,
    customer_rtp: RtpPeer,
    agent: SippProcess,
    agent_rtp: RtpPeer,
    agent_b: SippProcess,
    agent_b_rtp: RtpPeer,
    target: SippProcess,
    target_rtp: RtpPeer,
    /// The customer's call and the consultation call.
    a: String,
    b: String,
}

const AGENT_HZ: f64 = 900.0;
const AGENT_B_HZ: f64 = 1100.0;
const TARGET_HZ: f64 = 1700.0;

/// Connects the customer to the agent, holds the customer, and places the consultation call;
/// returns once the target answered it.
fn consultation() -> Consultation {
    let uas = |delay: u32| {
        let rtp = RtpPeer::new();
        let mut p = Sipp::uas("uas_reinvited.xml")
            .set("rtp_port", rtp.port())
            .set("answer_delay_ms", delay)
            .timeout_s(60)
            .spawn();
        p.wait_listening();
        (p, rtp)
    };
    let (mut agent, agent_rtp) = uas(300);
    let (mut agent_b, agent_b_rtp) = uas(300);
    let (mut target, target_rtp) = uas(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("agentb", agent_b.port()),
        trunk("target", target.port()),
        number_with_plan("500", "b", &bridge_to_trunk("agent", "NORMAL_CLEARING"))
    );
    let server = Server::start(&prov, true);
    let (mut customer, customer_rtp) = reinvited_caller(&server, "500");
    let a = server.started_call_id();
    let ok =
        customer.wait_for_message("the 200 OK to the customer", Duration::from_secs(15), |m| {
            !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
        });
    customer_rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP"));
    let invite = agent.wait_for_message("the INVITE to the agent", Duration::from_secs(5), |m| {
        !m.sent && m.method() == Some("INVITE")
    });
    agent_rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
    agent.wait_for_message("the agent's 200", Duration::from_secs(5), |m| {
        m.sent && m.status() == Some(200)
    });
    // The agent holds the customer and consults the target from its second line.
    let r = post(&server, &format!("/v1/calls/{a}/hold"), None);
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = post(
        &server,
        "/v1/calls/callback",
        Some(serde_json::json!({
            "tenant": "t1",
            "first": {"destinationType": "SIP_TRUNK", "destination": "agentb"},
            "second": {"destinationType": "SIP_TRUNK", "destination": "target"},
        })),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    let b = r.json()["id"]
        .as_str()
        .expect("the consultation call")
        .to_string();
    for (who, p, rtp) in [
        ("agent b", &mut agent_b, &agent_b_rtp),
        ("target", &mut target, &target_rtp),
    ] {
        let invite = p.wait_for_message(
            &format!("the INVITE to {who}"),
            Duration::from_secs(10),
            |m| !m.sent && m.method() == Some("INVITE"),
        );
        rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP"));
        p.wait_for_message(&format!("{who}'s 200"), Duration::from_secs(5), |m| {
            m.sent && m.status() == Some(200)
        });
    }
    Consultation {
        server,
        customer,
        customer_rtp,
        agent,
        agent_rtp,
        agent_b,
        agent_b_rtp,
        target,
        target_rtp,
        a,
        b,
    }
}

/// An attended transfer: the customer (held while its agent consulted) ends up talking with
/// the consultation call's target; both of the agent's dialogs get a BYE.
#[test]
fn an_attended_transfer_connects_the_customer_to_the_consulted_target() {
    let c = consultation();
    let server = &c.server;
    let (a, b) = (&c.a, &c.b);
    let (mut events, _) = common::ws::connect(server, &format!("token={KEY}"));
    common::ws::subscribe(&mut events, serde_json::json!({"op": "subscribe"}));
    let mut window = (Instant::now(), Instant::now());
    std::thread::scope(|s| {
        s.spawn(|| c.customer_rtp.send_pcm(&sine(CALLER_HZ, 6.0, 6000.0)));
        s.spawn(|| c.agent_rtp.send_pcm(&sine(AGENT_HZ, 6.0, 6000.0)));
        s.spawn(|| c.agent_b_rtp.send_pcm(&sine(AGENT_B_HZ, 6.0, 6000.0)));
        s.spawn(|| c.target_rtp.send_pcm(&sine(TARGET_HZ, 6.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(1000));
        let r = post(
            server,
            &format!("/v1/calls/{a}/transfer"),
            Some(serde_json::json!({"consultCallId": b})),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        let v = r.json();
        assert_eq!(v["bridgedTo"], format!("{a}.2"), "{v}");
        assert_eq!(v["legs"][2]["destination"], "target", "{v}");
        assert_eq!(v["legs"][1]["state"], "ended", "{v}");
        assert_eq!(v["state"], "answered", "the customer is off hold: {v}");
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2500));
        window = (
            t + Duration::from_millis(600),
            t + Duration::from_millis(2400),
        );
        // The moved party's keys are the customer's call's now: `call.dtmf` on it, from the
        // target's leg there.
        c.target_rtp.send_rfc4733("5", 101, 5);
        let deadline = Instant::now() + Duration::from_secs(5);
        let dtmf = loop {
            let v = common::ws::next_json(&mut events).expect("events");
            if v["type"] == "call.dtmf" {
                break v;
            }
            assert!(Instant::now() < deadline, "no call.dtmf");
        };
        assert_eq!(dtmf["callId"], a.as_str(), "{dtmf}");
        assert_eq!(dtmf["legId"], format!("{a}.2"), "{dtmf}");
        assert_eq!(dtmf["data"]["digit"], "5", "{dtmf}");
        // The consultation call is over.
        let r = http::json(
            server.http_port(),
            "GET",
            &format!("/v1/calls/{b}"),
            Some(KEY),
            None,
        );
        assert_eq!(r.status, 404, "{}", r.describe());
        let r = post(server, &format!("/v1/calls/{a}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    let (customer, agent, agent_b, target) = (c.customer, c.agent, c.agent_b, c.target);
    customer.wait().assert_success(&server.log_tail());
    for (who, p) in [("agent", agent), ("agent b", agent_b)] {
        let r = p.wait();
        r.assert_success(&server.log_tail());
        assert!(
            r.received_request("BYE").is_some(),
            "{who} got a BYE: {}",
            r.report()
        );
    }
    target.wait().assert_success(&server.log_tail());
    let at_customer = c.customer_rtp.heard(window.0, window.1);
    let at_target = c.target_rtp.heard(window.0, window.1);
    println!("customer hears {}", levels(&at_customer));
    println!("target hears {}", levels(&at_target));
    for (who, pcm, hz, not) in [
        ("customer", &at_customer, TARGET_HZ, [AGENT_HZ, AGENT_B_HZ]),
        ("target", &at_target, CALLER_HZ, [AGENT_HZ, AGENT_B_HZ]),
    ] {
        assert!(
            tone_amplitude(pcm, hz) > HEARD,
            "{who} hears its new party: {:.0}\n{}",
            tone_amplitude(pcm, hz),
            server.log_tail()
        );
        for n in not {
            assert!(
                tone_amplitude(pcm, n) < SILENT,
                "{who} hears no agent ({n} Hz)"
            );
        }
        assert!(tone_amplitude(pcm, MUSIC_HZ) < SILENT, "no music");
    }
    let cdr_a = server.wait_for_cdr("the customer's call", |x| &x.call_id == a);
    assert_eq!(cdr_a.legs.len(), 3, "{}", cdr_text(&cdr_a));
    assert_eq!(cdr_a.legs[2].destination, "target", "{}", cdr_text(&cdr_a));
    assert_eq!(
        cdr_a.variables.get("transferred_to_call"),
        Some(b),
        "{}",
        cdr_text(&cdr_a)
    );
    let cdr_b = server.wait_for_cdr("the consultation call", |x| &x.call_id == b);
    assert_eq!(
        cdr_b.variables.get("transferred_to_call"),
        Some(a),
        "{}",
        cdr_text(&cdr_b)
    );
}

/// A consultation that is given up (the consultation call hung up) returns the customer to
/// its agent: unhold, and they hear each other again.
#[test]
fn a_cancelled_attended_transfer_returns_the_customer_to_the_agent() {
    let c = consultation();
    let server = &c.server;
    let (a, b) = (&c.a, &c.b);
    let mut windows = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| c.customer_rtp.send_pcm(&sine(CALLER_HZ, 6.0, 6000.0)));
        s.spawn(|| c.agent_rtp.send_pcm(&sine(AGENT_HZ, 6.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(1200));
        windows.push((
            "held",
            Instant::now() - Duration::from_millis(900),
            Instant::now(),
        ));
        let r = post(server, &format!("/v1/calls/{b}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
        // The consultation is gone: transferring to it is refused, the customer stays.
        let r = post(
            server,
            &format!("/v1/calls/{a}/transfer"),
            Some(serde_json::json!({"consultCallId": b})),
        );
        assert_eq!(r.status, 409, "{}", r.describe());
        assert_eq!(
            r.error().1.as_deref(),
            Some("consultCallId"),
            "{}",
            r.describe()
        );
        let r = post(server, &format!("/v1/calls/{a}/unhold"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2500));
        windows.push((
            "back",
            t + Duration::from_millis(600),
            t + Duration::from_millis(2400),
        ));
        let r = post(server, &format!("/v1/calls/{a}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    });
    let (customer, agent, agent_b, target) = (c.customer, c.agent, c.agent_b, c.target);
    customer.wait().assert_success(&server.log_tail());
    agent.wait().assert_success(&server.log_tail());
    agent_b.wait().assert_success(&server.log_tail());
    target.wait().assert_success(&server.log_tail());
    for (name, from, to) in windows {
        let at_customer = c.customer_rtp.heard(from, to);
        let at_agent = c.agent_rtp.heard(from, to);
        println!("{name} customer hears {}", levels(&at_customer));
        println!("{name} agent hears {}", levels(&at_agent));
        if name == "held" {
            // The built-in music on hold: audible, and not the agent.
            let audible = at_customer.chunks(160).filter(|f| is_audible(f)).count();
            assert!(audible > 20, "held: music ({audible} audible frames)");
            assert!(
                tone_amplitude(&at_customer, AGENT_HZ) < SILENT,
                "held: no agent"
            );
        } else {
            assert!(
                tone_amplitude(&at_customer, AGENT_HZ) > HEARD,
                "back with the agent"
            );
            assert!(
                tone_amplitude(&at_agent, CALLER_HZ) > HEARD,
                "the agent hears it"
            );
        }
    }
}
