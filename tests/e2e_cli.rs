//! The operator command line against a running switch: `callplane calls list`, `hangup`,
//! `events` and `call`, with a key, on a real call from SIPp; `--help` on the commands.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "cp_cli_e2e_admin_key_012345678901";

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_callplane"))
        .args(args)
        .env_remove("CALLPLANE_API")
        .env_remove("CALLPLANE_API_KEY")
        .output()
        .expect("run callplane")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_command_has_help() {
    let top = cli(&["--help"]);
    assert!(top.status.success(), "{}", text(&top));
    for word in [
        "serve", "calls", "call", "hangup", "events", "apikey", "config",
    ] {
        assert!(
            text(&top).contains(word),
            "--help names {word}:\n{}",
            text(&top)
        );
    }
    for cmd in [
        &["calls", "list", "--help"][..],
        &["hangup", "--help"],
        &["events", "--help"],
        &["call", "--help"],
        &["serve", "--help"],
        &["apikey", "create", "--help"],
    ] {
        let o = cli(cmd);
        assert!(o.status.success(), "{cmd:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{cmd:?}: {}", text(&o));
    }
    let bad = cli(&["calls", "list", "--nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

#[test]
fn calls_list_hangup_and_events_drive_a_real_call() {
    let mut prov = format!("[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n");
    prov.push_str(&tenant_with_prompts());
    prov.push_str("[[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"pw\"\n\n");
    prov.push_str(&number_with_plan(
        "700",
        "wait",
        r##"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 1, maxDigits = 4, terminator = "#", maxTries = 1, timeout = 60 },"##,
    ));
    let server = Server::start(&prov, true);
    let api = format!("http://127.0.0.1:{}", server.http_port());

    // The events stream, printed one JSON event per line.
    let mut events = Command::new(env!("CARGO_BIN_EXE_callplane"))
        .args(["events", "--number", "700", "--api", &api, "--key", KEY])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run callplane events");
    let stdout = events.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("700")
        .set("rtp_port", rtp.port())
        .timeout_s(20)
        .spawn();
    // The call, as the list shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let o = cli(&["calls", "list", "--json", "--api", &api, "--key", KEY]);
        assert!(o.status.success(), "{}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if let Some(c) = v.as_array().and_then(|a| a.first()) {
            if c["state"] == "answered" {
                break c["id"].as_str().unwrap_or_default().to_string();
            }
        }
        assert!(Instant::now() < deadline, "no call listed: {}", text(&o));
        std::thread::sleep(Duration::from_millis(100));
    };
    let table = cli(&["calls", "list", "--api", &api, "--key", KEY]);
    assert!(table.status.success());
    let t = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        t.contains(&id) && t.contains("answered") && t.contains("700"),
        "{t}"
    );

    let o = cli(&[
        "hangup",
        &id,
        "--cause",
        "USER_BUSY",
        "--api",
        &api,
        "--key",
        KEY,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let res = sipp.wait();
    assert!(res.success(), "the caller gets the BYE\n{}", res.report());
    let cdr = server.cdr_for_call_id(&res.call_id);
    assert_eq!(cdr.hangup_cause, "USER_BUSY", "{}", cdr_text(&cdr));

    // Ended now: the command says so, with the API's status, and fails.
    let o = cli(&["hangup", &id, "--api", &api, "--key", KEY]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("409"), "{}", text(&o));
    assert!(text(&o).contains("has ended"), "{}", text(&o));
    // A wrong key is the API's 401.
    let o = cli(&[
        "calls",
        "list",
        "--api",
        &api,
        "--key",
        "wrong-key-000000000000",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("401"), "{}", text(&o));
    // A callback to a phone that is not registered: the API's 409, naming the field.
    let o = cli(&[
        "call", "alice", "4930123", "--tenant", "t1", "--api", &api, "--key", KEY,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("409"), "{}", text(&o));

    // The stream printed the call's events, ending with its hangup and finish.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["callId"] == id.as_str() {
            let t = v["type"].as_str().unwrap_or("").to_string();
            let done = t == "call.finished";
            seen.push(t);
            if done {
                break;
            }
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("call.created"),
        "{seen:?}"
    );
    assert!(seen.contains(&"call.hangup".to_string()), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("call.finished"),
        "{seen:?}"
    );
}
