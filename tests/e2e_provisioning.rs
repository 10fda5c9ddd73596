//! The provisioning REST API against the real binary: objects created over HTTP route the very
//! next call (SIPp places it, the CDR shows it), an uploaded WAV of another format is converted
//! and heard (and a replacement is heard at the next call), and API keys of each realm see only
//! what their scope allows, with errors in the documented JSON shape naming the field.

mod common;

use common::http::{self, HttpResponse};
use common::*;
use serde_json::json;
use std::process::Command;

const ADMIN_KEY: &str = "e2e-admin-key-0123456789";

/// The server with only an admin key from the config file: everything else comes by REST.
fn server() -> Server {
    let prov = format!("[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN_KEY}\"\n\n");
    Server::start(&prov, true)
}

fn api(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> HttpResponse {
    http::json(server.http_port(), method, path, key, body.as_ref())
}

/// A request that must succeed with `status`.
fn ok(
    server: &Server,
    status: u16,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let r = api(server, method, path, Some(key), body);
    server.check(
        r.status == status,
        format!("{method} {path}: expected {status}, got {}", r.describe()),
    );
    if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    }
}

/// An error answer: the status, `error.code` and `error.field`.
fn expect_error(r: &HttpResponse, status: u16, code: &str, field: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.describe());
    let (got_code, got_field) = r.error();
    assert_eq!(got_code, code, "{what}: {}", r.describe());
    assert_eq!(got_field.as_deref(), field, "{what}: {}", r.describe());
}

fn tenant(server: &Server, name: &str, customer_number: i64) {
    ok(
        server,
        201,
        "POST",
        "/v1/tenants",
        ADMIN_KEY,
        Some(json!({ "name": name, "customerNumber": customer_number })),
    );
}

/// A plan `name` with these blocks and a number routed to it, both by REST.
fn number_with_plan(
    server: &Server,
    tenant: &str,
    number: &str,
    plan: &str,
    blocks: serde_json::Value,
) {
    ok(
        server,
        201,
        "POST",
        &format!("/v1/tenants/{tenant}/routingplans"),
        ADMIN_KEY,
        Some(json!({ "name": plan, "blocks": blocks })),
    );
    ok(
        server,
        201,
        "POST",
        &format!("/v1/tenants/{tenant}/numbers"),
        ADMIN_KEY,
        Some(json!({ "number": number, "routingPlan": plan })),
    );
}

/// Places a call to `number` that the server answers, plays to and hangs up; returns the
/// PCM the caller heard.
fn call_and_listen(server: &Server, number: &str) -> (SippResult, Vec<RtpPacket>) {
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());
    server.check(
        sipp.received_request("BYE").is_some(),
        format!("no BYE from the server\n{}", sipp.report()),
    );
    (sipp, rtp.packets())
}

#[test]
fn objects_created_by_rest_route_the_next_call() {
    let server = server();
    // "Weasels have eaten our phone system", from the standard prompt set.
    let weasels = read_wav(std::path::Path::new(
        "/usr/share/asterisk/sounds/en/tt-weasels.wav",
    ));
    tenant(&server, "acme", 300001);
    number_with_plan(
        &server,
        "acme",
        "555100",
        "greet",
        json!([
            { "blockType": "ANNOUNCEMENT", "standardAnnouncement": true, "announcementName": "tt-weasels" },
            { "blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING" }
        ]),
    );
    // The API answers with what it stored.
    let n = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/acme/numbers/555100",
        ADMIN_KEY,
        None,
    );
    assert_eq!(
        n,
        json!({ "number": "555100", "tenant": "acme", "routingPlan": "greet", "callstateInfoUrl": null })
    );

    // No restart: the next INVITE finds the number.
    let (sipp, packets) = call_and_listen(&server, "555100");
    let expected = weasels.samples.len().div_ceil(160) as i64;
    let got = packets.len() as i64;
    server.check(
        (got - expected).abs() * 10 <= expected,
        format!("tt-weasels is {expected} packets of 20 ms; the caller got {got}"),
    );
    let audio = pcm_of(&packets);
    let (_, corr) = find_audio(&audio, &weasels.samples).unwrap_or((0, 0.0));
    server.check(
        corr > 0.95,
        format!("the caller did not hear tt-weasels (correlation {corr:.3})"),
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.tenant.as_deref(), Some("acme"), "{}", cdr_text(&cdr));
    assert_eq!(cdr.number, "555100");
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING");
    assert_eq!(cdr.sip_status, Some(200));
    assert!(cdr.answer_time.is_some(), "{}", cdr_text(&cdr));

    // Re-pointed by PUT, the number reaches the new plan at the next call: refused with 486.
    ok(
        &server,
        201,
        "PUT",
        "/v1/tenants/acme/routingplans/busy",
        ADMIN_KEY,
        Some(json!({ "blocks": [{ "blockType": "HANGUP", "hangupCause": "USER_BUSY" }] })),
    );
    ok(
        &server,
        200,
        "PUT",
        "/v1/tenants/acme/numbers/555100",
        ADMIN_KEY,
        Some(json!({ "routingPlan": "busy" })),
    );
    assert_eq!(refused_with(&server, "555100"), 486);
    let cdr = server.wait_for_cdr("the busy call", |c| c.hangup_cause == "USER_BUSY");
    assert_eq!(cdr.tenant.as_deref(), Some("acme"), "{}", cdr_text(&cdr));

    // Deleted, the number is unknown at the next call.
    ok(
        &server,
        204,
        "DELETE",
        "/v1/tenants/acme/numbers/555100",
        ADMIN_KEY,
        None,
    );
    assert_eq!(refused_with(&server, "555100"), 404);
}

/// Calls a number that refuses the call; returns the final status of the INVITE.
fn refused_with(server: &Server, number: &str) -> u16 {
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());
    sipp.final_responses("INVITE")
        .first()
        .and_then(|m| m.status())
        .unwrap_or_else(|| panic!("no final response\n{}", sipp.report()))
}

/// 16 kHz stereo 16-bit PCM of three tone bursts (500, 1200, 800 Hz) with 5 ms ramps, the
/// same on both channels; and the same signal computed directly at 8 kHz.
fn bursts(rate: u32, scale: f64) -> Vec<i16> {
    let segments = [
        (0.0, 0.4, 500.0, 8000.0),
        (0.6, 1.2, 1200.0, 12000.0),
        (1.5, 1.8, 800.0, 6000.0),
    ];
    let total = (2.0 * rate as f64) as usize;
    (0..total)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let v: f64 = segments
                .iter()
                .filter(|(a, b, _, _)| t >= *a && t < *b)
                .map(|(a, b, f, amp)| {
                    let ramp = ((t - a) / 0.005).min((b - t) / 0.005).min(1.0);
                    amp * scale * ramp * (2.0 * std::f64::consts::PI * f * t).sin()
                })
                .sum();
            v as i16
        })
        .collect()
}

fn stereo_wav(rate: u32, mono: &[i16]) -> Vec<u8> {
    let both: Vec<i16> = mono.iter().flat_map(|&s| [s, s]).collect();
    pcm16_wav(rate, 2, &both)
}

fn upload(server: &Server, tenant: &str, name: &str, wav: &[u8]) -> HttpResponse {
    let auth = format!("Bearer {ADMIN_KEY}");
    http::request(
        server.http_port(),
        "PUT",
        &format!("/v1/tenants/{tenant}/announcements/{name}"),
        &[("Authorization", &auth), ("Content-Type", "audio/wav")],
        wav,
    )
}

#[test]
fn an_uploaded_announcement_is_converted_and_played() {
    let server = server();
    tenant(&server, "acme", 300001);
    let original = bursts(16000, 1.0);
    let r = upload(&server, "acme", "hello", &stereo_wav(16000, &original));
    server.check(r.status == 201, format!("upload: {}", r.describe()));
    let file = std::path::PathBuf::from(r.json()["file"].as_str().unwrap_or_default());
    assert_eq!(
        file,
        server.dir().join("data/announcements/acme/hello.wav"),
        "the upload is stored under <dataDir>/announcements/<tenant>/"
    );
    // Stored as 8 kHz mono 16-bit PCM (read_wav insists on mono), the same sound.
    let stored = read_wav(&file);
    assert_eq!(stored.rate, 8000);
    let expected = bursts(8000, 1.0);
    assert!(
        stored.samples.len().abs_diff(expected.len()) <= 8,
        "2 s at 8 kHz is {} samples, stored {}",
        expected.len(),
        stored.samples.len()
    );
    let (_, corr) = find_audio(&stored.samples, &expected[..15000]).unwrap_or((0, 0.0));
    assert!(
        corr > 0.95,
        "the stored audio is not the upload: correlation {corr:.3}"
    );

    number_with_plan(
        &server,
        "acme",
        "555200",
        "play",
        json!([
            { "blockType": "ANNOUNCEMENT", "announcementName": "hello" },
            { "blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING" }
        ]),
    );
    let (sipp, packets) = call_and_listen(&server, "555200");
    let heard = pcm_of(&packets);
    let (_, corr) = find_audio(&heard, &stored.samples).unwrap_or((0, 0.0));
    server.check(
        corr > 0.95,
        format!(
            "the caller did not hear the upload (correlation {corr:.3}, {} packets)",
            packets.len()
        ),
    );
    server.cdr_for_call_id(&sipp.call_id);

    // Replaced by a quieter, shorter file: the next call plays the new one.
    let short: Vec<i16> = bursts(16000, 0.5)[..16000].to_vec();
    let r = upload(&server, "acme", "hello", &stereo_wav(16000, &short));
    server.check(r.status == 200, format!("re-upload: {}", r.describe()));
    let (_, packets) = call_and_listen(&server, "555200");
    let got = packets.len() as i64;
    server.check(
        (got - 50).abs() <= 5,
        format!("the replaced announcement is 1 s = 50 packets; the caller got {got}"),
    );

    // Not a WAV file: 400 naming `body`; nothing replaced.
    let r = upload(&server, "acme", "hello", b"RIFF....not really");
    expect_error(&r, 400, "validation_failed", Some("body"), "garbage upload");
    assert_eq!(
        read_wav(&file).samples.len(),
        8000,
        "a refused upload changed the file"
    );

    let list = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/acme/announcements",
        ADMIN_KEY,
        None,
    );
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn keys_see_only_their_scope_and_errors_name_the_field() {
    let server = server();
    let port = server.http_port();

    // No key, or a wrong one.
    let r = api(&server, "GET", "/v1/tenants", None, None);
    expect_error(&r, 401, "unauthorized", None, "no key");
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    let r = api(
        &server,
        "GET",
        "/v1/tenants",
        Some("cp_0000000000000000000000000000000000000000"),
        None,
    );
    expect_error(&r, 401, "unauthorized", None, "unknown key");
    // The description needs no key and lists the routes.
    let doc = http::request(port, "GET", "/v1/openapi.json", &[], b"");
    assert_eq!(doc.status, 200, "{}", doc.describe());
    assert!(doc.json()["paths"]["/v1/tenants/{tenant}/numbers/{number}"].is_object());

    tenant(&server, "alpha", 300010);
    tenant(&server, "bravo", 300020);
    let hangup = json!([{ "blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING" }]);
    number_with_plan(&server, "alpha", "555301", "main", hangup.clone());
    number_with_plan(&server, "bravo", "555302", "main", hangup);
    ok(
        &server,
        201,
        "POST",
        "/v1/tenants/alpha/sipusers",
        ADMIN_KEY,
        Some(json!({ "username": "alice", "password": "alice-secret" })),
    );

    // A customer key of alpha, made by the admin over REST; the secret is shown once.
    let created = ok(
        &server,
        201,
        "POST",
        "/v1/apikeys",
        ADMIN_KEY,
        Some(json!({ "name": "alpha-app", "realm": "customer", "tenant": "alpha" })),
    );
    let customer = created["key"].as_str().unwrap_or_default().to_string();
    assert!(
        customer.starts_with("cp_") && customer.len() == 43,
        "{created}"
    );
    let listed = ok(&server, 200, "GET", "/v1/apikeys", ADMIN_KEY, None);
    assert!(
        !listed.to_string().contains(&customer),
        "GET /v1/apikeys shows a secret"
    );

    let n = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/alpha/numbers/555301",
        &customer,
        None,
    );
    assert_eq!(n["routingPlan"], "main");
    let r = api(
        &server,
        "GET",
        "/v1/tenants/bravo/numbers/555302",
        Some(&customer),
        None,
    );
    expect_error(
        &r,
        404,
        "not_found",
        None,
        "customer reading another tenant's number",
    );
    let r = api(&server, "GET", "/v1/tenants/bravo", Some(&customer), None);
    expect_error(
        &r,
        404,
        "not_found",
        None,
        "customer reading another tenant",
    );
    let r = api(
        &server,
        "POST",
        "/v1/tenants",
        Some(&customer),
        Some(json!({ "name": "charlie", "customerNumber": 300030 })),
    );
    expect_error(&r, 403, "forbidden", None, "customer creating a tenant");

    // An account key, from the CLI against the running server's data directory.
    let out = Command::new(env!("CARGO_BIN_EXE_callplane"))
        .args([
            "apikey",
            "create",
            "--realm",
            "account",
            "--sip-user",
            "alice",
            "--data-dir",
        ])
        .arg(server.dir().join("data"))
        .output()
        .expect("run callplane apikey create");
    assert!(
        out.status.success(),
        "apikey create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let account = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        account.starts_with("cp_") && account.len() == 43,
        "stdout: {account:?}"
    );
    let me = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/alpha/sipusers/alice",
        &account,
        None,
    );
    assert_eq!(me["username"], "alice");
    let r = api(
        &server,
        "GET",
        "/v1/tenants/alpha/numbers",
        Some(&account),
        None,
    );
    expect_error(&r, 403, "forbidden", None, "account listing numbers");
    let r = api(
        &server,
        "GET",
        "/v1/tenants/alpha/numbers/555301",
        Some(&account),
        None,
    );
    expect_error(&r, 403, "forbidden", None, "account reading a number");

    // Malformed JSON; an out-of-range block field; a bad number; a body naming another tenant.
    let auth = format!("Bearer {customer}");
    let r = http::request(
        port,
        "POST",
        "/v1/tenants/alpha/numbers",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{\"number\": \"555303\", \"routingPlan\": ",
    );
    expect_error(&r, 400, "invalid_json", None, "truncated JSON");
    let r = api(
        &server,
        "POST",
        "/v1/tenants/alpha/numbers",
        Some(&customer),
        Some(json!({ "number": "555303", "routingPlan": "main", "plan": "x" })),
    );
    expect_error(&r, 400, "invalid_json", Some("plan"), "unknown field");
    let r = api(
        &server,
        "POST",
        "/v1/tenants/alpha/routingplans",
        Some(&customer),
        Some(json!({ "name": "pin", "blocks": [
            { "blockType": "COLLECT_DIGITS", "announcementName": "x", "variableName": "pin",
              "minDigits": 4, "maxDigits": 40 }
        ] })),
    );
    expect_error(
        &r,
        400,
        "validation_failed",
        Some("blocks[0].maxDigits"),
        "maxDigits 40",
    );
    let r = api(
        &server,
        "POST",
        "/v1/tenants/alpha/numbers",
        Some(&customer),
        Some(json!({ "number": "555-303", "routingPlan": "main" })),
    );
    expect_error(&r, 400, "validation_failed", Some("number"), "bad number");
    let r = api(
        &server,
        "POST",
        "/v1/tenants/alpha/numbers",
        Some(&customer),
        Some(json!({ "number": "555303", "tenant": "bravo", "routingPlan": "main" })),
    );
    expect_error(
        &r,
        400,
        "validation_failed",
        Some("tenant"),
        "tenant mismatch",
    );
    let r = http::request(
        port,
        "POST",
        "/v1/tenants/alpha/numbers",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        b"{}",
    );
    expect_error(&r, 415, "unsupported_media_type", None, "text/plain body");
    // None of the refused writes left anything behind.
    let numbers = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/alpha/numbers",
        &customer,
        None,
    );
    assert_eq!(numbers.as_array().map(Vec::len), Some(1), "{numbers}");

    // The key is never written to the log.
    let log = server.log_lines().join("\n");
    for secret in [ADMIN_KEY, customer.as_str(), account.as_str()] {
        assert!(!log.contains(secret), "a key appears in the server log");
    }
}
