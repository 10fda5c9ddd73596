//! A real softphone against the real binary: PJSUA2 2.15.1 (pip package `pjsua2-python`, in a
//! venv under the target directory) driven by `tests/softphone/pjsua_peer.py`, with SIP over
//! TCP only (the phone has no UDP SIP transport at all), a null audio device and RTP/UDP media.
//!
//! - a call to a plan (announcement, HANGUP): confirmed, the phone's ACK reaches us over TCP
//!   (our 200's Contact says `;transport=tcp`; without it the phone cannot send the ACK and we
//!   end the call at Timer H, 32 s, with RECOVERY_ON_TIMER_EXPIRE), the announcement's RTP
//!   arrives, our BYE ends the call, the CDR says NORMAL_CLEARING;
//! - a phone registered with digest auth over TCP as a SIP user, reached by BRIDGE, puts the
//!   call on hold: our 200 answers `a=sendonly` with `a=recvonly`, in the same SDP session
//!   (o= session id of our INVITE) with a higher version;
//! - COLLECT_DIGITS waiting 60 s after a short prompt: the phone receives a continuous 50 pps
//!   stream for 45 s (silence once the prompt has ended).
//!
//! The driver reports facts as one `RESULT {json}` line; the assertions are here, and every
//! failure message carries the SIP flow the phone saw, the driver's log tail and the server's.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Pinned: the phone's behaviour (offers, timers, what it logs) belongs to a version.
const PJSUA2: &str = "pjsua2-python==2.15.1.post1";

const BOB: &str =
    "[[sipUsers]]\ntenant = \"t1\"\nusername = \"bob\"\npassword = \"bob-secret-7\"\n\n";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"))
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The venv's python with the pinned PJSUA2, made on first use (python3 -m venv, pip from
/// PyPI); a marker names the installed pin so a changed pin (or a broken venv) reinstalls.
/// Once per test process: the tests run in parallel and must not build it at the same time.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    PYTHON
        .get_or_init(|| {
            let venv = target_dir().join("pjsua2-venv");
            let py = venv.join("bin").join("python");
            let marker = venv.join(format!(".installed-{PJSUA2}"));
            let works = |py: &Path| {
                Command::new(py)
                    .args(["-c", "import pjsua2"])
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if marker.exists() && works(&py) {
                return py;
            }
            if venv.exists() {
                std::fs::remove_dir_all(&venv)
                    .unwrap_or_else(|e| panic!("cannot remove {}: {e}", venv.display()));
            }
            run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv (Debian: apt-get install python3-venv)",
            );
            run(
                Command::new(venv.join("bin").join("pip")).args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    PJSUA2,
                ]),
                &format!("pip install {PJSUA2}"),
            );
            assert!(works(&py), "{PJSUA2} installed but `import pjsua2` fails");
            std::fs::write(&marker, b"").expect("write venv marker");
            py
        })
        .clone()
}

/// One run of the driver: its result line and its log.
struct Phone {
    result: Value,
    stderr: Vec<String>,
    elapsed: Duration,
}

impl Phone {
    /// Runs `pjsua_peer.py args…`, killing it after `limit`. Panics (with its output) when it
    /// printed no result line.
    fn run(server: &Server, args: &[&str], limit: Duration) -> Phone {
        let script = manifest_dir()
            .join("tests")
            .join("softphone")
            .join("pjsua_peer.py");
        let started = Instant::now();
        let mut child = Command::new(python())
            .arg(&script)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the PJSUA2 driver");
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::<String>::new()));
            let l2 = lines.clone();
            let t = std::thread::spawn(move || {
                let mut r = BufReader::new(r);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => l2
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf).trim_end().to_string()),
                    }
                }
            });
            (lines, t)
        };
        let (out, t_out) = collect(Box::new(child.stdout.take().expect("stdout")));
        let (err, t_err) = collect(Box::new(child.stderr.take().expect("stderr")));
        let deadline = started + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let _ = t_out.join();
        let _ = t_err.join();
        let elapsed = started.elapsed();
        let stdout = out.lock().unwrap().clone();
        let stderr = err.lock().unwrap().clone();
        let result = stdout
            .iter()
            .find_map(|l| l.strip_prefix("RESULT "))
            .and_then(|j| serde_json::from_str::<Value>(j).ok());
        let Some(result) = result else {
            panic!(
                "the PJSUA2 driver printed no RESULT line ({}, after {elapsed:?}):\nstdout:\n{}\n\
                 stderr (last 150 lines):\n{}\n{}",
                match status {
                    Some(st) => format!("exit {st}"),
                    None => format!("killed after {limit:?}"),
                },
                stdout.join("\n"),
                tail(&stderr, 150),
                server.log_tail()
            );
        };
        if let Some(e) = result.get("error") {
            panic!(
                "PJSUA2 failed: {e}\nstderr (last 150 lines):\n{}\n{}",
                tail(&stderr, 150),
                server.log_tail()
            );
        }
        Phone {
            result,
            stderr,
            elapsed,
        }
    }

    /// The SIP flow as the phone saw it, one line per message.
    fn flow(&self) -> String {
        let mut s = String::from("SIP flow seen by the phone (seconds, rx/tx):\n");
        for l in self.result["flow"].as_array().into_iter().flatten() {
            s.push_str("    ");
            s.push_str(l.as_str().unwrap_or(""));
            s.push('\n');
        }
        s
    }

    /// A message the driver reported in full (`invite_200`, `hold_answer`, …).
    fn message(&self, key: &str) -> Option<TracedMessage> {
        let m = self.result.get(key)?;
        Some(TracedMessage {
            sent: m["dir"].as_str() == Some("tx"),
            time: m["t"].as_f64(),
            text: m["text"].as_str()?.to_string(),
        })
    }

    /// Everything a failure message needs: the flow, the driver's log tail, the server's.
    fn context(&self, server: &Server) -> String {
        format!(
            "{}driver result: {}\ndriver log (last 120 lines):\n{}\n{}",
            self.flow(),
            compact(&self.result),
            tail(&self.stderr, 120),
            server.log_tail()
        )
    }

    fn check(&self, server: &Server, ok: bool, msg: impl AsRef<str>) {
        if !ok {
            self.fail(server, msg);
        }
    }

    fn fail(&self, server: &Server, msg: impl AsRef<str>) -> ! {
        panic!("{}\n{}", msg.as_ref(), self.context(server));
    }
}

fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    | {l}\n"))
        .collect()
}

/// The result without the long parts (flow and full messages), for failure messages.
fn compact(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in [
            "flow",
            "invite_200",
            "invite_to_bob",
            "hold_reinvite",
            "hold_answer",
        ] {
            o.remove(k);
        }
    }
    v.to_string()
}

/// The o= line's session id and session version.
fn sdp_origin(sdp: &str) -> Option<(String, u64)> {
    let o = sdp.lines().find_map(|l| l.trim().strip_prefix("o="))?;
    let f: Vec<&str> = o.split_whitespace().collect();
    Some((f.get(1)?.to_string(), f.get(2)?.parse().ok()?))
}

/// The direction attributes of an SDP body.
fn sdp_directions(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
        .map(str::to_string)
        .collect()
}

#[test]
fn tcp_only_phone_call_to_a_plan_completes_and_hangs_up_cleanly() {
    let started = Instant::now();
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan("100", "main", WELCOME_THEN_CLEARING)
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let phone = Phone::run(
        &server,
        &[
            "call",
            "--sip-port",
            &port,
            "--number",
            "100",
            "--wait-disconnect",
            "40",
        ],
        Duration::from_secs(120),
    );
    let r = &phone.result;
    let call = &r["call"];
    eprintln!(
        "tcp-only phone: confirmed={} by={} confirmed→disconnected={}s last={} {:?} rtp_rx={} \
         200 Contact={} (scenario {}s, driver process {:.1}s)",
        r["confirmed"],
        r["disconnected_by"],
        call["confirmed_to_disconnected"],
        call["last_status"],
        call["last_reason"].as_str().unwrap_or(""),
        call["rtp_rx_packets"],
        r["invite_200_contact"],
        r["elapsed"],
        phone.elapsed.as_secs_f64()
    );
    phone.check(
        &server,
        r["confirmed"] == Value::Bool(true),
        "the phone's call (INVITE over TCP) must reach CONFIRMED",
    );

    // The Contact of our 200 is where the phone sends its ACK and BYE: a TCP-only phone needs
    // `;transport=tcp` there (transport parameter values are case-insensitive, RFC 3261 19.1.1).
    let ok = phone.message("invite_200");
    let contact = ok
        .as_ref()
        .and_then(|m| m.header("Contact"))
        .unwrap_or_default();
    phone.check(
        &server,
        contact.to_ascii_lowercase().contains("transport=tcp"),
        format!(
            "the Contact of our 200 to the INVITE must say transport=tcp, it is {contact:?}:\n{}",
            ok.map(|m| m.text)
                .unwrap_or_else(|| "(no 200 to the INVITE)".into())
        ),
    );

    phone.check(
        &server,
        r["disconnected_by"].as_str() == Some("server"),
        format!(
            "the call must end with the server's BYE (after the announcement), ended by {}",
            r["disconnected_by"]
        ),
    );
    let secs = call["confirmed_to_disconnected"]
        .as_f64()
        .unwrap_or(f64::MAX);
    phone.check(
        &server,
        secs < 10.0,
        format!(
            "the server's BYE must come right after the 1.3 s announcement, well before Timer H \
             (32 s, what a phone that cannot send its ACK over TCP sees): it came {secs} s after \
             CONFIRMED"
        ),
    );
    let rx = call["rtp_rx_packets"].as_u64().unwrap_or(0);
    phone.check(
        &server,
        rx > 50,
        format!("the phone must receive the announcement's RTP (> 50 packets), got {rx}"),
    );

    let cid = call["sip_call_id"].as_str().expect("the call's Call-ID");
    let cdr = server.cdr_for_call_id(cid);
    phone.check(
        &server,
        cdr.hangup_cause == "NORMAL_CLEARING",
        format!(
            "the CDR must say NORMAL_CLEARING (RECOVERY_ON_TIMER_EXPIRE means the ACK never \
             came):\n{}",
            cdr_text(&cdr)
        ),
    );
    eprintln!(
        "tcp_only_phone_call_to_a_plan_completes_and_hangs_up_cleanly: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The same call over UDP: answered, the announcement heard, the server's BYE, a clean CDR.
#[test]
fn udp_phone_call_to_a_plan_completes_and_hangs_up_cleanly() {
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan("100", "main", WELCOME_THEN_CLEARING)
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let phone = Phone::run(
        &server,
        &[
            "call",
            "--transport",
            "udp",
            "--sip-port",
            &port,
            "--number",
            "100",
            "--wait-disconnect",
            "40",
        ],
        Duration::from_secs(120),
    );
    let r = &phone.result;
    let call = &r["call"];
    phone.check(
        &server,
        r["confirmed"] == Value::Bool(true),
        "the phone's call (INVITE over UDP) must reach CONFIRMED",
    );
    phone.check(
        &server,
        r["disconnected_by"].as_str() == Some("server"),
        format!(
            "the call must end with the server's BYE (after the announcement), ended by {}",
            r["disconnected_by"]
        ),
    );
    let secs = call["confirmed_to_disconnected"]
        .as_f64()
        .unwrap_or(f64::MAX);
    phone.check(
        &server,
        secs < 10.0,
        format!("the server's BYE must come right after the announcement: {secs} s"),
    );
    let rx = call["rtp_rx_packets"].as_u64().unwrap_or(0);
    phone.check(
        &server,
        rx > 50,
        format!("the phone must receive the announcement's RTP (> 50 packets), got {rx}"),
    );
    let cid = call["sip_call_id"].as_str().expect("the call's Call-ID");
    let cdr = server.cdr_for_call_id(cid);
    phone.check(
        &server,
        cdr.hangup_cause == "NORMAL_CLEARING",
        format!("the CDR must say NORMAL_CLEARING:\n{}", cdr_text(&cdr)),
    );
}

#[test]
fn bridged_softphone_hold_gets_recvonly_with_same_session_and_higher_version() {
    let started = Instant::now();
    let prov = format!(
        "{}{BOB}{}",
        tenant_with_prompts(),
        number_with_plan(
            "200",
            "tobob",
            r##"  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_USER", destination = "bob", timeout = 20 } ] },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##
        )
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let phone = Phone::run(
        &server,
        &[
            "hold",
            "--sip-port",
            &port,
            "--number",
            "200",
            "--user",
            "bob",
            "--password",
            "bob-secret-7",
        ],
        Duration::from_secs(120),
    );
    let r = &phone.result;
    eprintln!(
        "bridged softphone: register={} caller_confirmed={} bob_confirmed={} hold_sent={} \
         bob media {} (scenario {}s, driver process {:.1}s)",
        r["register_status"],
        r["caller_confirmed"],
        r["bob_confirmed"],
        r["hold_sent"],
        r["bob_call"]["media_states"],
        r["elapsed"],
        phone.elapsed.as_secs_f64()
    );
    phone.check(
        &server,
        r["register_status"].as_u64() == Some(200),
        "bob's REGISTER over TCP (digest auth) must get 200",
    );
    phone.check(
        &server,
        r["bob_confirmed"] == Value::Bool(true) && r["caller_confirmed"] == Value::Bool(true),
        "the BRIDGE must reach bob's phone and both legs must be CONFIRMED",
    );

    let invite = phone.message("invite_to_bob");
    let answer = phone.message("hold_answer");
    let (Some(invite), Some(answer)) = (invite, answer) else {
        phone.fail(
            &server,
            "the server's INVITE to bob and its final answer to bob's hold re-INVITE must both \
             be in the phone's message log",
        );
    };
    phone.check(
        &server,
        answer.status() == Some(200),
        format!(
            "the hold re-INVITE (a=sendonly) must be answered 200:\n{}",
            answer.text
        ),
    );
    let offer = invite.body().to_string();
    let held = answer.body().to_string();
    let both = format!(
        "our INVITE to bob:\n{}\nour answer to bob's hold re-INVITE:\n{}",
        invite.text, answer.text
    );
    phone.check(
        &server,
        sdp_directions(&held) == ["recvonly"],
        format!(
            "a=sendonly must be answered with a=recvonly only, got {:?}\n{both}",
            sdp_directions(&held)
        ),
    );
    let (Some((sess0, ver0)), Some((sess1, ver1))) = (sdp_origin(&offer), sdp_origin(&held)) else {
        phone.fail(&server, format!("both SDPs need an o= line\n{both}"));
    };
    phone.check(
        &server,
        sess1 == sess0,
        format!("the hold answer must keep our o= session id {sess0}, it has {sess1}\n{both}"),
    );
    phone.check(
        &server,
        ver1 > ver0,
        format!(
            "the hold answer's o= version must be higher than the INVITE's {ver0}, it is \
             {ver1}\n{both}"
        ),
    );
    eprintln!("hold: INVITE o= {sess0} v{ver0}, 200 to the hold o= {sess1} v{ver1} a=recvonly");

    let cid = r["caller_call"]["sip_call_id"]
        .as_str()
        .expect("the caller's Call-ID");
    let cdr = server.cdr_for_call_id(cid);
    let leg = cdr.legs.iter().find(|l| l.direction == "outbound").cloned();
    phone.check(
        &server,
        leg.as_ref().is_some_and(|l| {
            l.destination_type.as_deref() == Some("SIP_USER")
                && l.destination == "bob"
                && l.answer_time.is_some()
        }),
        format!(
            "the CDR must have bob's answered SIP_USER leg:\n{}",
            cdr_text(&cdr)
        ),
    );
    eprintln!(
        "bridged_softphone_hold_gets_recvonly_with_same_session_and_higher_version: {:.1}s \
         (CDR cause {} by {})",
        started.elapsed().as_secs_f64(),
        cdr.hangup_cause,
        cdr.hangup_by
    );
}

#[test]
fn collect_digits_wait_of_45s_keeps_receiving_rtp() {
    const SECONDS: usize = 45;
    /// A continuous stream is 50 packets a second; allow for the 1 s windows' edges.
    const MIN_PER_SECOND: u64 = 40;
    let started = Instant::now();
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "300",
            "pin",
            r##"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 4, maxDigits = 4, maxTries = 1, timeout = 60 },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##
        )
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let phone = Phone::run(
        &server,
        &[
            "call",
            "--sip-port",
            &port,
            "--number",
            "300",
            "--sample",
            &SECONDS.to_string(),
        ],
        Duration::from_secs(150),
    );
    let r = &phone.result;
    phone.check(
        &server,
        r["confirmed"] == Value::Bool(true),
        "the phone's call to 300 must reach CONFIRMED",
    );
    let deltas: Vec<u64> = r["rx_per_second"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let mut table = String::from("RTP packets received by the phone per second after CONFIRMED:\n");
    for (i, chunk) in deltas.chunks(15).enumerate() {
        let row: Vec<String> = chunk.iter().map(|d| format!("{d:3}")).collect();
        table.push_str(&format!(
            "    s{:>2}-{:>2}: {}\n",
            i * 15 + 1,
            i * 15 + chunk.len(),
            row.join(" ")
        ));
    }
    eprintln!(
        "{table}(scenario {}s, driver process {:.1}s)",
        r["elapsed"],
        phone.elapsed.as_secs_f64()
    );
    phone.check(
        &server,
        deltas.len() == SECONDS,
        format!(
            "the phone must hold the call for {SECONDS} s (the plan waits 60 s for digits), \
             it has {} one-second samples\n{table}",
            deltas.len()
        ),
    );
    let thin: Vec<(usize, u64)> = deltas
        .iter()
        .enumerate()
        .filter(|(_, &d)| d < MIN_PER_SECOND)
        .map(|(i, &d)| (i + 1, d))
        .collect();
    phone.check(
        &server,
        thin.is_empty(),
        format!(
            "while COLLECT_DIGITS waits the phone must keep receiving RTP (the prompt, then \
             silence) at 50 packets a second; seconds with fewer than {MIN_PER_SECOND} packets \
             (second, packets): {thin:?}\n{table}"
        ),
    );
    phone.check(
        &server,
        r["disconnected_by"].as_str() == Some("phone"),
        format!(
            "the phone hangs up after {SECONDS} s, ended by {}",
            r["disconnected_by"]
        ),
    );
    let cid = r["call"]["sip_call_id"]
        .as_str()
        .expect("the call's Call-ID");
    let cdr = server.cdr_for_call_id(cid);
    phone.check(
        &server,
        cdr.hangup_cause == "NORMAL_CLEARING" && cdr.hangup_by == "caller",
        format!(
            "the CDR must say NORMAL_CLEARING by the caller:\n{}",
            cdr_text(&cdr)
        ),
    );
    eprintln!(
        "collect_digits_wait_of_45s_keeps_receiving_rtp: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

const API_KEY: &str = "cp_softphone_e2e_admin_key_0123456";

/// A call placed through the API (`POST /v1/calls`) to a registered PJSUA2 phone, over one
/// transport: the phone is rung, answers, hears the blocks and gets the server's BYE.
/// The phone registered as bob (over `transport`): it answers the first call it gets and
/// waits for the server to end it.
fn bob_answers(server: &Server, port: &str, transport: &str) -> Phone {
    Phone::run(
        server,
        &[
            "answer",
            "--transport",
            transport,
            "--sip-port",
            port,
            "--user",
            "bob",
            "--password",
            "bob-secret-7",
            "--wait-call",
            "30",
            "--wait-disconnect",
            "40",
        ],
        Duration::from_secs(120),
    )
}

fn api_call_to_a_registered_softphone(transport: &str) {
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{API_KEY}\"\n\n{}{BOB}",
        tenant_with_prompts()
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let body = json!({
        "tenant": "t1",
        "to": {"destinationType": "SIP_USER", "destination": "bob"},
        "callerId": "+4922199",
        "blocks": [
            {"blockType": "ANNOUNCEMENT", "announcementName": "welcome"},
            {"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}
        ]
    });
    let (phone, placed) = std::thread::scope(|s| {
        let phone = s.spawn(|| bob_answers(&server, &port, transport));
        // Placed as soon as the phone's registration is in (409 until then).
        let deadline = Instant::now() + Duration::from_secs(25);
        let placed = loop {
            let r = http::json(
                server.http_port(),
                "POST",
                "/v1/calls",
                Some(API_KEY),
                Some(&body),
            );
            if r.status == 201 || Instant::now() > deadline {
                break r;
            }
            assert_eq!(r.status, 409, "{}", r.describe());
            std::thread::sleep(Duration::from_millis(100));
        };
        (phone.join().expect("the phone's thread"), placed)
    });
    assert_eq!(
        placed.status,
        201,
        "{}\n{}",
        placed.describe(),
        server.log_tail()
    );
    let id = placed.json()["id"].as_str().expect("id").to_string();
    let r = &phone.result;
    phone.check(
        &server,
        r["register_status"].as_u64() == Some(200),
        format!("bob's REGISTER over {transport} must get 200"),
    );
    phone.check(
        &server,
        r["confirmed"] == Value::Bool(true),
        "the placed call must be CONFIRMED",
    );
    phone.check(
        &server,
        r["disconnected_by"].as_str() == Some("server"),
        format!(
            "the HANGUP block must end it with our BYE, ended by {}",
            r["disconnected_by"]
        ),
    );
    let from = r["invite"]["text"].as_str().unwrap_or_default().to_string();
    phone.check(
        &server,
        from.contains("sip:+4922199@"),
        "the phone must see callerId in the INVITE's From",
    );
    let rx = r["call"]["rtp_rx_packets"].as_u64().unwrap_or(0);
    phone.check(
        &server,
        rx > 50,
        format!("the phone must hear the announcement (> 50 RTP packets), got {rx}"),
    );
    let cdr = server.wait_for_cdr("the placed call's CDR", move |c| c.call_id == id);
    phone.check(
        &server,
        cdr.hangup_cause == "NORMAL_CLEARING" && cdr.answer_time.is_some(),
        format!(
            "the CDR must show an answered call cleared normally:\n{}",
            cdr_text(&cdr)
        ),
    );
}

#[test]
fn an_api_call_rings_a_tcp_softphone_that_answers_and_hears_the_blocks() {
    api_call_to_a_registered_softphone("tcp");
}

#[test]
fn an_api_call_rings_a_udp_softphone_that_answers_and_hears_the_blocks() {
    api_call_to_a_registered_softphone("udp");
}

/// A phone's call bridged to a SIPp callee is held and resumed through the API: the phone
/// gets our re-INVITE `sendonly` (and answers `recvonly`, its media REMOTE_HOLD), then
/// `sendrecv` (ACTIVE again); the API's hangup ends it with our BYE.
fn api_hold_of_a_softphone(transport: &str) {
    const KEY: &str = "cp_softphone_hold_admin_key_012345";
    let (callee, _callee_rtp) = reinvited_callee(200);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{}{}",
        tenant_with_prompts(),
        trunk("callee", callee.port()),
        number_with_plan(
            "500",
            "b",
            r##"  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "callee", timeout = 15 } ] },"##
        )
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let api =
        |method: &str, path: &str| http::json(server.http_port(), method, path, Some(KEY), None);
    let phone = std::thread::scope(|s| {
        let phone = s.spawn(|| {
            Phone::run(
                &server,
                &[
                    "call",
                    "--sip-port",
                    &port,
                    "--number",
                    "500",
                    "--wait-disconnect",
                    "30",
                    "--transport",
                    transport,
                ],
                Duration::from_secs(60),
            )
        });
        // Connected: the call lists its callee.
        let deadline = Instant::now() + Duration::from_secs(20);
        let id = loop {
            let calls = api("GET", "/v1/calls").json();
            if let Some(c) = calls.as_array().and_then(|a| a.first()) {
                if c["bridgedTo"].is_string() {
                    break c["id"].as_str().unwrap_or_default().to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no connected call: {calls}\n{}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(500));
        let r = api("POST", &format!("/v1/calls/{id}/hold"));
        assert_eq!(r.status, 200, "{}", r.describe());
        std::thread::sleep(Duration::from_millis(1500));
        let r = api("POST", &format!("/v1/calls/{id}/unhold"));
        assert_eq!(r.status, 200, "{}", r.describe());
        std::thread::sleep(Duration::from_millis(1500));
        let r = api("POST", &format!("/v1/calls/{id}/hangup"));
        assert_eq!(r.status, 200, "{}", r.describe());
        phone.join().expect("the phone's thread")
    });
    callee.wait().assert_success(&server.log_tail());
    let answers: Vec<String> = phone.result["reinvite_answers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    phone.check(
        &server,
        answers.len() == 2,
        format!(
            "the phone must answer two re-INVITEs (hold, resume), answered {}",
            answers.len()
        ),
    );
    let dir = |sdp: &str| {
        sdp.lines()
            .map(str::trim)
            .find(|l| {
                matches!(
                    *l,
                    "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
                )
            })
            .unwrap_or("a=sendrecv")
            .to_string()
    };
    phone.check(
        &server,
        dir(&answers[0]) == "a=recvonly",
        format!("the hold is answered recvonly: {}", answers[0]),
    );
    phone.check(
        &server,
        dir(&answers[1]) == "a=sendrecv",
        format!("the resume is answered sendrecv: {}", answers[1]),
    );
    let media: Vec<&str> = phone.result["call"]["media_states"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m[1].as_str())
        .collect();
    let held = media.iter().position(|m| *m == "REMOTE_HOLD");
    phone.check(
        &server,
        held.is_some_and(|i| media[i + 1..].contains(&"ACTIVE")),
        format!("the phone's media must go REMOTE_HOLD then ACTIVE: {media:?}"),
    );
    phone.check(
        &server,
        phone.result["disconnected_by"] == "server",
        "the API's hangup sends our BYE",
    );
}

#[test]
fn a_tcp_softphone_is_held_and_resumed_through_the_api() {
    api_hold_of_a_softphone("tcp");
}

#[test]
fn a_udp_softphone_is_held_and_resumed_through_the_api() {
    api_hold_of_a_softphone("udp");
}

#[test]
fn a_udp_softphone_handed_to_a_new_call_by_a_transfer_keeps_its_session() {
    softphone_handed_to_a_new_call("udp");
}

#[test]
fn a_tcp_softphone_handed_to_a_new_call_by_a_transfer_keeps_its_session() {
    softphone_handed_to_a_new_call("tcp");
}

/// A blind transfer from leg 0 with a real phone as the party handed over: a call placed
/// through the API rings a SIPp agent (leg 0) and bridges it to the registered phone; the
/// transfer from leg 0 hangs the agent up and hands the phone, without any SIP to it, to a new
/// call that dials a SIPp target. The phone keeps receiving RTP, and the new call can hold and
/// resume it: its re-INVITEs continue the phone's session (same `o=` id, growing version) and
/// the phone answers them recvonly, then sendrecv.
fn softphone_handed_to_a_new_call(transport: &str) {
    const KEY: &str = "cp_softphone_handoff_admin_key_0123";
    let (mut agent, agent_rtp) = reinvited_callee(200);
    let (mut target, target_rtp) = reinvited_callee(300);
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}{BOB}{}{}",
        tenant_with_prompts(),
        trunk("agent", agent.port()),
        trunk("target", target.port()),
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let api = |method: &str, path: &str, body: Option<Value>| {
        http::json(server.http_port(), method, path, Some(KEY), body.as_ref())
    };
    let mut new_call = String::new();
    let mut old_call = String::new();
    let phone = std::thread::scope(|s| {
        let phone = s.spawn(|| bob_answers(&server, &port, transport));
        server
            .wait_for_log("registered", Duration::from_secs(25))
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
        let r = api(
            "POST",
            "/v1/calls",
            Some(json!({
                "tenant": "t1",
                "to": {"destinationType": "SIP_TRUNK", "destination": "agent"},
                "callerId": "+4930300",
                "blocks": [{"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL", "destinations": [
                    {"destinationType": "SIP_USER", "destination": "bob", "timeout": 20}]}]
            })),
        );
        assert_eq!(r.status, 201, "{}", r.describe());
        old_call = r.json()["id"].as_str().expect("id").to_string();
        wait_invited(&mut agent, &agent_rtp);
        // The agent talks until it is hung up, the target from when it answers.
        s.spawn(|| agent_rtp.send_pcm(&sine(700.0, 4.0, 6000.0)));
        // The phone answered.
        wait_bridged(&server, KEY, &old_call, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(1000));
        let r = api(
            "POST",
            &format!("/v1/calls/{old_call}/transfer"),
            Some(json!({
                "to": {"destinationType": "SIP_TRUNK", "destination": "target"},
                "from": format!("{old_call}.0")
            })),
        );
        assert_eq!(r.status, 200, "{}", r.describe());
        new_call = r.json()["variables"]["transferred_to_call"]
            .as_str()
            .expect("the new call")
            .to_string();
        wait_invited(&mut target, &target_rtp);
        s.spawn(|| target_rtp.send_pcm(&sine(1100.0, 6.0, 6000.0)));
        std::thread::sleep(Duration::from_millis(1500));
        for command in ["hold", "unhold"] {
            let r = api("POST", &format!("/v1/calls/{new_call}/{command}"), None);
            assert_eq!(r.status, 200, "{command}: {}", r.describe());
            std::thread::sleep(Duration::from_millis(1500));
        }
        let r = api("POST", &format!("/v1/calls/{new_call}/hangup"), None);
        assert_eq!(r.status, 200, "{}", r.describe());
        phone.join().expect("the phone's thread")
    });
    agent.wait().assert_success(&server.log_tail());
    target.wait().assert_success(&server.log_tail());
    let r = &phone.result;
    phone.check(
        &server,
        r["confirmed"] == Value::Bool(true),
        "the phone answered",
    );
    phone.check(
        &server,
        r["disconnected_by"].as_str() == Some("server"),
        "the new call's hangup sends the BYE",
    );
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect()
    };
    let invites = strings(&r["invite_bodies"]);
    phone.check(
        &server,
        invites.len() == 3,
        format!(
            "the phone got its call and two re-INVITEs (hold, resume) and nothing for the \
             hand-over: {} INVITEs",
            invites.len()
        ),
    );
    let origins: Vec<(String, u64)> = invites.iter().filter_map(|b| sdp_origin(b)).collect();
    phone.check(
        &server,
        origins.len() == 3
            && origins.iter().all(|o| o.0 == origins[0].0)
            && origins.windows(2).all(|w| w[1].1 > w[0].1),
        format!("the new call continues the phone's session: {origins:?}"),
    );
    let answers = strings(&r["reinvite_answers"]);
    let directions: Vec<Vec<String>> = answers.iter().map(|a| sdp_directions(a)).collect();
    phone.check(
        &server,
        directions.len() == 2
            && directions[0] == ["recvonly"]
            && (directions[1].is_empty() || directions[1] == ["sendrecv"]),
        format!("the phone answers the hold recvonly, the resume sendrecv: {directions:?}"),
    );
    // RTP all along (the agent's, the target's, music on hold): the stream's count, read
    // every 0.5 s, grows in every half second; it restarts when a re-INVITE renews the stream
    // (twice: hold, resume).
    let samples: Vec<(f64, u64)> = r["rx_samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_u64()?)))
        .collect();
    let stalled = samples.windows(2).filter(|w| w[1].1 == w[0].1).count();
    let renewed = samples.windows(2).filter(|w| w[1].1 < w[0].1).count();
    phone.check(
        &server,
        samples.len() >= 8 && stalled == 0 && renewed <= 2,
        format!("the phone kept receiving RTP through the hand-over: {samples:?}"),
    );
    let cdr = server.wait_for_cdr("the new call's CDR", |c| c.call_id == new_call);
    phone.check(
        &server,
        cdr.legs.len() == 2
            && cdr.legs[0].destination == "bob"
            && cdr.legs[0].destination_type.as_deref() == Some("SIP_USER")
            && cdr.variables.get("transferred_from_call") == Some(&old_call),
        format!("the new call's CDR: {}", cdr_text(&cdr)),
    );
}

/// A REFER block against a real phone: PJSUA2 (over `transport` only) calls a number whose
/// plan REFERs it to a SIPp "target" on the same transport. The phone accepts (202), calls the
/// target itself, reports the outcome in NOTIFYs; once one says 200 our part ends with our
/// BYE, the CDR says `referred`.
fn a_softphone_accepts_a_refer(transport: &str) {
    let tcp = transport == "tcp";
    let mut target = Sipp::uas("uas_answer.xml")
        .arg("-t")
        .arg(if tcp { "t1" } else { "u1" })
        .set("rtp_port", RtpPeer::new().port())
        .set("answer_delay_ms", 200)
        .set("hangup_after_ms", 1500)
        .timeout_s(60)
        .spawn();
    target.wait_listening();
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "710",
            "refer",
            &format!(
                "  {{ blockType = \"REFER\", destination = \"sip:target@127.0.0.1:{};transport={transport}\" }},\n  {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }},",
                target.port()
            )
        )
    );
    let server = Server::start(&prov, true);
    let port = server.sip_port().to_string();
    let phone = Phone::run(
        &server,
        &[
            "call",
            "--transport",
            transport,
            "--sip-port",
            &port,
            "--number",
            "710",
            "--wait-disconnect",
            "20",
        ],
        Duration::from_secs(90),
    );
    let r = &phone.result;
    phone.check(
        &server,
        r["confirmed"] == Value::Bool(true),
        "the phone's call must reach CONFIRMED",
    );
    let flow: Vec<String> = r["flow"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // The phone's view, in order: our REFER, its 202, its NOTIFYs, then our BYE.
    let at = |dir: &str, what: &str| {
        flow.iter()
            .position(|l| l.contains(dir) && l.contains(what))
    };
    let refer = at(" rx ", "REFER sip:");
    let accepted = at(" tx ", "SIP/2.0 202");
    let notify = at(" tx ", "NOTIFY sip:");
    let last_notify = flow
        .iter()
        .rposition(|l| l.contains(" tx ") && l.contains("NOTIFY sip:"));
    let bye = at(" rx ", "BYE sip:");
    phone.check(&server, refer.is_some(), "the phone got our REFER");
    phone.check(&server, accepted > refer, "the phone accepted it (202)");
    phone.check(&server, notify > accepted, "the phone reported in NOTIFYs");
    phone.check(
        &server,
        bye > last_notify,
        "our BYE came after its last NOTIFY",
    );
    phone.check(
        &server,
        r["disconnected_by"].as_str() == Some("server"),
        format!("our BYE ends our part: ended by {}", r["disconnected_by"]),
    );
    let target = target.wait();
    phone.check(
        &server,
        target.received_request("INVITE").is_some(),
        format!("the phone called the target itself\n{}", target.report()),
    );
    let cdr = server.wait_for_cdr("the referred call", |c| c.number == "710");
    assert_eq!(cdr.hangup_by, "referred", "{}", cdr_text(&cdr));
    let leg = cdr.legs.iter().find(|l| l.direction == "refer");
    assert_eq!(
        leg.and_then(|l| l.sip_status),
        Some(200),
        "{}",
        cdr_text(&cdr)
    );
}

#[test]
fn a_tcp_softphone_accepts_a_refer_calls_the_target_and_our_part_ends_as_referred() {
    a_softphone_accepts_a_refer("tcp");
}

#[test]
fn a_udp_softphone_accepts_a_refer_calls_the_target_and_our_part_ends_as_referred() {
    a_softphone_accepts_a_refer("udp");
}
