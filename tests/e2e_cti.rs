//! Live call control over the API against real calls: SIPp callers into a plan, the calls
//! resource (`GET /v1/calls`, `GET /v1/calls/{id}`), `POST /v1/calls/{id}/hangup` ending a call
//! with the BYE on the wire and the cause in the CDR, and the events WebSocket: the exact ordered
//! events of a call, realms on events, resuming a session, and a client that never reads being
//! closed while calls go on.

mod common;

use common::ws::*;
use common::*;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::Message;

const ADMIN: &str = "cp_cti_e2e_admin_key_0123456789";
const ALICE: &str = "cp_cti_e2e_alice_key_0123456789";
const SLOW: &str = "cp_cti_e2e_slow_key_01234567890";

/// A plan that answers and then waits for digits for a minute: the call stays up until the
/// API (or the caller) ends it.
fn server(extra_server: &str) -> Server {
    let mut prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN}\"\n\n\
         [[apiKeys]]\nname = \"alice-line\"\nrealm = \"account\"\nsipUser = \"alice\"\nkey = \"{ALICE}\"\n\n\
         [[apiKeys]]\nname = \"slow\"\nrealm = \"customer\"\ntenant = \"t1\"\nkey = \"{SLOW}\"\nrateLimit = 1\n\n"
    );
    prov.push_str(&tenant_with_prompts());
    prov.push_str(
        "[[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"alice-pw\"\n\n",
    );
    prov.push_str(&number_with_plan(
        "700",
        "wait",
        r##"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 1, maxDigits = 4, terminator = "#", maxTries = 1, timeout = 60 },"##,
    ));
    Server::start_with(
        &prov,
        ServerOptions {
            extra_server: extra_server.to_string(),
            ..ServerOptions::default()
        },
    )
}

fn get(server: &Server, path: &str, key: &str) -> http::HttpResponse {
    http::json(server.http_port(), "GET", path, Some(key), None)
}

fn post(server: &Server, path: &str, key: &str, body: Option<Value>) -> http::HttpResponse {
    http::json(server.http_port(), "POST", path, Some(key), body.as_ref())
}

/// The calls the API lists, once `n` are answered.
fn wait_for_answered_calls(server: &Server, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(server, "/v1/calls", ADMIN);
        assert_eq!(r.status, 200, "{}", r.describe());
        let calls = r.json().as_array().cloned().unwrap_or_default();
        if calls.iter().filter(|c| c["state"] == "answered").count() >= n {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "no answered call: {}",
            r.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a caller answered by its plan and then hung up by the API produces, in order.
const CALL_EVENTS: &[&str] = &[
    "call.created",
    "call.answered",
    "leg.state",
    "leg.state",
    "call.hangup",
    "call.finished",
];

#[test]
fn the_api_lists_reads_and_hangs_up_a_call_and_a_websocket_sees_its_events_in_order() {
    let server = server("");
    let (mut admin, hello) = connect(&server, &format!("token={ADMIN}"));
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["resumed"], false);
    subscribe(&mut admin, json!({"op": "subscribe"}));
    // An account key's socket: alice's line has no part in this call.
    let (mut alice, _) = connect(&server, &format!("token={ALICE}"));
    subscribe(&mut alice, json!({"op": "subscribe"}));

    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .timeout_s(20)
        .spawn();
    let calls = wait_for_answered_calls(&server, 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let id = calls[0]["id"].as_str().expect("id").to_string();

    let one = get(&server, &format!("/v1/calls/{id}"), ADMIN);
    assert_eq!(one.status, 200, "{}", one.describe());
    let c = one.json();
    assert_eq!(c["sipCallId"], sipp.call_id.as_str(), "{c}");
    assert_eq!(c["tenant"], "t1");
    assert_eq!(c["number"], "700");
    assert_eq!(c["from"], "sipp");
    assert_eq!(c["state"], "answered");
    assert_eq!(c["legs"][0]["id"], format!("{id}.0"));
    assert_eq!(c["legs"][0]["party"], "caller");
    assert_eq!(c["legs"][0]["state"], "answered");
    assert_eq!(c["variables"]["destination_number"], "700", "{c}");
    assert!(c["answerTime"].is_string(), "{c}");

    let filtered = get(&server, "/v1/calls?number=999", ADMIN);
    assert_eq!(filtered.json(), json!([]), "{}", filtered.describe());
    let by_number = get(&server, "/v1/calls?number=700", ADMIN);
    assert_eq!(by_number.json().as_array().map(Vec::len), Some(1));
    // The account key sees no call that is not on its line, and cannot end one.
    assert_eq!(get(&server, "/v1/calls", ALICE).json(), json!([]));
    assert_eq!(get(&server, &format!("/v1/calls/{id}"), ALICE).status, 404);
    let r = post(&server, &format!("/v1/calls/{id}/hangup"), ALICE, None);
    assert_eq!(r.status, 404, "{}", r.describe());
    // Keypad digits to the caller, as RFC 4733 events (it offered telephone-event/8000 on 101).
    let r = post(
        &server,
        &format!("/v1/calls/{id}/dtmf"),
        ADMIN,
        Some(json!({"digits": "4#"})),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let mut ev: Vec<u8> = rtp
            .packets()
            .iter()
            .filter(|p| p.pt == 101 && !p.payload.is_empty())
            .map(|p| p.payload[0])
            .collect();
        ev.dedup();
        if ev.len() >= 2 || Instant::now() > deadline {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(events, [4, 11], "RFC 4733 events for 4 and #");
    let r = post(
        &server,
        &format!("/v1/calls/{id}/dtmf"),
        ADMIN,
        Some(json!({"digits": "4", "leg": format!("{id}.7")})),
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = post(
        &server,
        &format!("/v1/calls/{id}/dtmf"),
        ADMIN,
        Some(json!({"digits": "x"})),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some("digits"));

    let r = post(
        &server,
        &format!("/v1/calls/{id}/hangup"),
        ADMIN,
        Some(json!({"hangupCause": "BUSY"})),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.error().1.as_deref(), Some("hangupCause"));

    let r = post(
        &server,
        &format!("/v1/calls/{id}/hangup"),
        ADMIN,
        Some(json!({"hangupCause": "USER_BUSY"})),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["state"], "ending", "{}", r.describe());
    let res = sipp.wait();
    assert!(res.success(), "SIPp did not get the BYE:\n{}", res.report());
    let bye = res
        .messages
        .iter()
        .find(|m| m.method() == Some("BYE"))
        .expect("a BYE");
    let reason = bye.header("Reason").unwrap_or_default();
    assert!(reason.contains("cause=17"), "Reason: {reason}");

    let cdr = server.cdr_for_call_id(&res.call_id);
    assert_eq!(cdr.hangup_cause, "USER_BUSY", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "api", "{}", cdr_text(&cdr));
    // Ended: no longer a call in progress (404 to read), and a command on it is 409 saying
    // it has ended.
    assert_eq!(get(&server, &format!("/v1/calls/{id}"), ADMIN).status, 404);
    let again = post(&server, &format!("/v1/calls/{id}/hangup"), ADMIN, None);
    assert_eq!(again.status, 409, "{}", again.describe());
    assert!(again.text().contains("has ended"), "{}", again.describe());

    // The call's history: on its number for the admin; nothing for another line's key.
    let h = get(&server, "/v1/cdrs?number=700", ADMIN).json();
    assert_eq!(h["items"][0]["callId"], id.as_str(), "{h}");
    assert_eq!(h["items"][0]["hangupBy"], "api", "{h}");
    assert_eq!(get(&server, "/v1/cdrs", ALICE).json()["items"], json!([]));
    assert_eq!(get(&server, "/v1/cdrs?line=bob", ALICE).status, 403);

    let events = events_until_finished(&mut admin, &id);
    assert_eq!(types(&events), CALL_EVENTS, "{events:#?}");
    for (i, e) in events.iter().enumerate() {
        // seq numbers what this socket was sent (only this call's events here); callSeq the
        // call's own events.
        assert_eq!(e["seq"], json!(i + 1), "{e}");
        assert_eq!(e["callSeq"], json!(i + 1), "{e}");
        assert_eq!(e["tenant"], "t1");
    }
    assert_eq!(events[1]["legId"], format!("{id}.0"));
    assert_eq!(events[2]["data"]["party"], "caller", "{events:#?}");
    assert_eq!(events[2]["data"]["state"], "answered", "{events:#?}");
    assert_eq!(events[2]["legId"], format!("{id}.0"));
    assert_eq!(events[3]["data"]["state"], "ended", "{events:#?}");
    assert_eq!(events[4]["data"]["cause"], "USER_BUSY");
    assert_eq!(events[4]["data"]["hangupBy"], "api");

    // Commands on the socket: a reply with the command's id; the ended call is 409.
    send(
        &mut admin,
        json!({"op": "command", "id": "c1", "method": "calls.hangup", "params": {"callId": id}}),
    );
    let reply = next_json(&mut admin).expect("reply");
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], "c1");
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["status"], 409, "{reply}");
    // The same command id again is not run again: its first reply, marked replayed.
    send(
        &mut admin,
        json!({"op": "command", "id": "c1", "method": "calls.hangup", "params": {"callId": id}}),
    );
    let again = next_json(&mut admin).expect("reply");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["status"], 409, "{again}");
    send(&mut admin, json!({"op": "ping", "id": 7}));
    assert_eq!(
        next_json(&mut admin),
        Some(json!({"type": "pong", "id": 7}))
    );

    // The account socket got nothing of the call.
    alice
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    send(&mut alice, json!({"op": "ping", "id": 1}));
    let first = next_json(&mut alice);
    assert_eq!(
        first,
        Some(json!({"type": "pong", "id": 1})),
        "alice saw: {first:?}"
    );
    assert_eq!(next_json(&mut alice), None);
}

#[test]
fn a_resumed_session_gets_exactly_the_events_it_missed() {
    let server = server("");
    let (mut full, _) = connect(&server, &format!("token={ADMIN}"));
    subscribe(&mut full, json!({"op": "subscribe", "numbers": ["700"]}));
    let (mut ws, hello) = connect(&server, &format!("token={ADMIN}"));
    let session = hello["session"].as_str().expect("session").to_string();
    subscribe(&mut ws, json!({"op": "subscribe", "numbers": ["700"]}));

    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .timeout_s(20)
        .spawn();
    let calls = wait_for_answered_calls(&server, 1);
    let id = calls[0]["id"].as_str().expect("id").to_string();
    // Read up to the answer, then drop the connection without a close frame.
    let last = loop {
        let e = next_json(&mut ws).expect("event");
        if e["type"] == "call.answered" {
            break e["seq"].as_u64().expect("seq");
        }
    };
    drop(ws);
    std::thread::sleep(Duration::from_millis(200));
    let r = post(&server, &format!("/v1/calls/{id}/hangup"), ADMIN, None);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(sipp.wait().success());
    let all = events_until_finished(&mut full, &id);
    assert_eq!(types(&all), CALL_EVENTS, "{all:#?}");
    // Wait until the missed events exist.
    std::thread::sleep(Duration::from_millis(300));

    // Another key cannot take the session over.
    let (mut other, _) = connect(
        &server,
        &format!("token={ALICE}&session={session}&resume={last}"),
    );
    let _ = &mut other;
    let (mut ws, hello) = connect(
        &server,
        &format!("token={ADMIN}&session={session}&resume={last}"),
    );
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(hello["session"], session.as_str());
    let missed = events_until_finished(&mut ws, &id);
    let expected: Vec<Value> = all[last as usize..].to_vec();
    assert_eq!(
        missed.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(),
        (last + 1..=all.len() as u64)
            .map(|s| json!(s))
            .collect::<Vec<_>>(),
        "{missed:#?}"
    );
    // The same events as the other socket saw (it numbered them the same: one call).
    assert_eq!(missed, expected);

    // A resume while the old connection is still open takes the session over: the old
    // socket is closed (4009), the new one goes on from the seq it names.
    let last_now = missed.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
    let (_taker, hello) = connect(
        &server,
        &format!("token={ADMIN}&session={session}&resume={last_now}"),
    );
    assert_eq!(hello["resumed"], true, "{hello}");
    let mut closed_with = None;
    for _ in 0..100 {
        match ws.read() {
            Ok(Message::Close(f)) => {
                closed_with = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(
        closed_with,
        Some(4009),
        "the old socket is closed as taken over"
    );

    // A session that does not exist: resume_failed, then a new session.
    let stream = TcpStream::connect(("127.0.0.1", server.http_port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let url = format!(
        "ws://127.0.0.1:{}/v1/events?token={ADMIN}&session=nope&resume=3",
        server.http_port()
    );
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("handshake");
    let failed = next_json(&mut ws).expect("resume_failed");
    assert_eq!(failed["type"], "resume_failed", "{failed}");
    let hello = next_json(&mut ws).expect("hello");
    assert_eq!(hello["resumed"], false, "{hello}");
    assert_ne!(hello["session"], session.as_str());
}

#[test]
fn events_need_a_key_and_a_websocket() {
    let server = server("");
    // A key with rateLimit = 1: a burst of 10, then 429 with Retry-After; other keys go on.
    let statuses: Vec<u16> = (0..11)
        .map(|_| get(&server, "/v1/calls", SLOW).status)
        .collect();
    assert_eq!(&statuses[..10], [200; 10], "{statuses:?}");
    let limited = get(&server, "/v1/calls", SLOW);
    assert_eq!(limited.status, 429, "{}", limited.describe());
    assert_eq!(limited.error().0, "rate_limited");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(get(&server, "/v1/calls", ADMIN).status, 200);
    // A rate given through the API: the new key has it (and it is listed), and a limited key
    // cannot hand out more than it has.
    let made = post(
        &server,
        "/v1/apikeys",
        ADMIN,
        Some(json!({"name": "api-slow", "realm": "customer", "tenant": "t1", "rateLimit": 1})),
    );
    assert_eq!(made.status, 201, "{}", made.describe());
    assert_eq!(made.json()["rateLimit"], 1);
    let secret = made.json()["key"].as_str().unwrap_or_default().to_string();
    let statuses: Vec<u16> = (0..11)
        .map(|_| get(&server, "/v1/calls", &secret).status)
        .collect();
    assert_eq!(&statuses[..10], [200; 10], "{statuses:?}");
    assert_eq!(get(&server, "/v1/calls", &secret).status, 429);
    let listed = get(&server, "/v1/apikeys/api-slow", ADMIN);
    assert_eq!(listed.json()["rateLimit"], 1, "{}", listed.describe());
    std::thread::sleep(Duration::from_millis(3100)); // "slow" gets three requests back
    for (rate, status) in [(json!(5), 403), (json!(0), 403)] {
        let r = post(
            &server,
            "/v1/apikeys",
            SLOW,
            Some(json!({"name": "greedy", "realm": "customer", "tenant": "t1", "rateLimit": rate})),
        );
        assert_eq!(r.status, status, "{}", r.describe());
        assert_eq!(r.error().1.as_deref(), Some("rateLimit"));
    }
    let r = post(
        &server,
        "/v1/apikeys",
        ADMIN,
        Some(json!({"name": "absurd", "realm": "admin", "rateLimit": 1_000_000})),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = http::json(server.http_port(), "GET", "/v1/events", None, None);
    assert_eq!(r.status, 401, "{}", r.describe());
    let r = get(&server, "/v1/events", ADMIN);
    assert_eq!(r.status, 426, "{}", r.describe());
    assert_eq!(r.error().0, "upgrade_required");
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let stream = TcpStream::connect(("127.0.0.1", server.http_port())).expect("connect");
    let url = format!(
        "ws://127.0.0.1:{}/v1/events?token=wrong-key-000000000",
        server.http_port()
    );
    match tungstenite::client(url.as_str(), stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// A TCP connection to 127.0.0.1:`port` whose receive buffer is made small before it
/// connects (so the window it advertises is small from the start), as a phone on a bad link
/// or a stuck client would have.
fn small_buffer_connect(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // TcpStream; every pointer is to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let small: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// A client that subscribes and then never reads: once it is more than `eventsQueue` events
/// behind, the server closes it, and every call goes on as if it did not exist.
#[test]
fn a_client_that_never_reads_is_closed_while_calls_go_on() {
    let server = server("eventsQueue = 20\n");
    let stream = small_buffer_connect(server.http_port());
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let url = format!(
        "ws://127.0.0.1:{}/v1/events?token={ADMIN}",
        server.http_port()
    );
    let (mut slow, _) = tungstenite::client(url.as_str(), stream).expect("handshake");
    let _hello = next_json(&mut slow);
    subscribe(&mut slow, json!({"op": "subscribe"}));
    // A fast client sees everything meanwhile.
    let (mut fast, _) = connect(&server, &format!("token={ADMIN}"));
    subscribe(&mut fast, json!({"op": "subscribe"}));
    let reader = std::thread::spawn(move || {
        let mut finished = 0;
        while let Some(v) = next_json(&mut fast) {
            if v["type"] == "call.finished" {
                finished += 1;
            }
        }
        finished
    });

    // Many short calls: each hangs up itself after 100 ms.
    let calls = 200;
    let rtp = RtpPeer::new();
    let res = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", 100)
        .arg("-m")
        .arg(&calls.to_string())
        .arg("-l")
        .arg("50")
        .arg("-r")
        .arg("100")
        .timeout_s(40)
        .run();
    assert!(res.success(), "the calls must go on:\n{}", res.report());
    wait_for_cdr_count(&server.db(), calls, Duration::from_secs(10)).expect("every call's CDR");
    let line = server
        .wait_for_log("queue_overflow", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the slow client was not closed: {e}\n{}", server.log_tail()));
    assert!(line.contains("events"), "{line}");
    // What the slow client finds when it reads at last: frames, then the end (a close frame
    // with the reason when it fitted, or the connection closed).
    let mut ended = false;
    for _ in 0..100_000 {
        match slow.read() {
            Ok(Message::Close(frame)) => {
                if let Some(f) = frame {
                    assert_eq!(u16::from(f.code), 4008, "{f:?}");
                    assert!(f.reason.as_str().starts_with("queue_overflow"), "{f:?}");
                }
                ended = true;
                break;
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the slow client's connection is still open");
    // The fast client got every call's end.
    let r = post(&server, "/v1/calls/none/hangup", ADMIN, None);
    assert_eq!(r.status, 404);
    drop(server);
    let finished = reader.join().expect("reader");
    assert_eq!(
        finished, calls,
        "the fast client saw {finished} of {calls} calls end"
    );
}

#[test]
fn a_request_retried_after_a_restart_with_its_idempotency_key_is_not_run_again() {
    let mut server = server("");
    let auth = format!("Bearer {ADMIN}");
    let body = br#"{"name": "t-idem", "customerNumber": 424242}"#;
    let create = |server: &Server| {
        http::request(
            server.http_port(),
            "POST",
            "/v1/tenants",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "create-t-idem"),
            ],
            body,
        )
    };
    let first = create(&server);
    assert_eq!(first.status, 201, "{}", first.describe());
    server.restart();
    // Run again, this would be 409 (the tenant exists); it is the first answer instead.
    let again = create(&server);
    assert_eq!(again.status, 201, "{}", again.describe());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
}
