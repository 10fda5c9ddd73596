//! Secrets at rest and in answers, against the real binary: the data directory and database
//! files are private whatever the umask, SIP passwords never reach the file in clear, GET
//! answers to customer and reseller keys carry `passwordSet` / `signingSecretSet` instead of
//! the secrets, and API keys may neither delete themselves nor the last admin key.

mod common;

use common::http::{self, HttpResponse};
use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const ADMIN_KEY: &str = "e2e-secrets-admin-key-0123";

fn api(server: &Server, method: &str, path: &str, key: &str, body: Option<Value>) -> HttpResponse {
    http::json(server.http_port(), method, path, Some(key), body.as_ref())
}

fn ok(
    server: &Server,
    status: u16,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Value {
    let r = api(server, method, path, key, body);
    server.check(
        r.status == status,
        format!("{method} {path}: expected {status}, got {}", r.describe()),
    );
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn secrets_stay_in_a_private_file_and_out_of_answers() {
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN_KEY}\"\n\n\
         [[sipUsers]]\ntenant = \"acme\"\nusername = \"cfguser\"\npassword = \"cfg-sip-secret\"\n\n\
         [[tenants]]\nname = \"acme\"\ncustomerNumber = 400001\nreseller = \"ws\"\n\
         signingSecret = \"cfg-hmac-secret\"\n"
    );
    let server = Server::start(&prov, true);

    // Files: the test runs with the usual umask (022), which would give 0755 and 0644.
    let data = server.dir().join("data");
    assert_eq!(mode(&data), 0o700, "data directory mode");
    let db = server.db_path();
    assert_eq!(mode(&db), 0o600, "database mode");
    for suffix in ["-wal", "-shm"] {
        let p = data.join(format!("callplane.db{suffix}"));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{} mode", p.display());
        }
    }

    // Objects with secrets, by REST; the creating answers do not echo them either.
    let t = ok(
        &server,
        200,
        "PUT",
        "/v1/tenants/acme",
        ADMIN_KEY,
        Some(
            json!({ "customerNumber": 400001, "reseller": "ws", "signingSecret": "rest-hmac-secret" }),
        ),
    );
    assert_eq!(t["signingSecretSet"], true, "{t}");
    let tr = ok(
        &server,
        201,
        "POST",
        "/v1/tenants/acme/trunks",
        ADMIN_KEY,
        Some(
            json!({ "name": "carrier", "host": "127.0.0.1", "username": "acct", "password": "rest-trunk-secret" }),
        ),
    );
    assert_eq!(tr["passwordSet"], true, "{tr}");
    let u = ok(
        &server,
        201,
        "POST",
        "/v1/tenants/acme/sipusers",
        ADMIN_KEY,
        Some(json!({ "username": "restuser", "password": "rest-sip-secret" })),
    );
    assert_eq!(u["passwordSet"], true, "{u}");
    assert!(u.get("password").is_none(), "{u}");

    let customer = ok(
        &server,
        201,
        "POST",
        "/v1/apikeys",
        ADMIN_KEY,
        Some(json!({ "name": "acme-app", "realm": "customer", "tenant": "acme" })),
    )["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let reseller = ok(
        &server,
        201,
        "POST",
        "/v1/apikeys",
        ADMIN_KEY,
        Some(json!({ "name": "ws-portal", "realm": "reseller", "reseller": "ws" })),
    )["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let secrets = [
        "cfg-sip-secret",
        "cfg-hmac-secret",
        "rest-hmac-secret",
        "rest-trunk-secret",
        "rest-sip-secret",
    ];
    for key in [&customer, &reseller, &ADMIN_KEY.to_string()] {
        for path in [
            "/v1/tenants",
            "/v1/tenants/acme",
            "/v1/tenants/acme/trunks",
            "/v1/tenants/acme/trunks/carrier",
            "/v1/tenants/acme/sipusers",
            "/v1/tenants/acme/sipusers/restuser",
            "/v1/tenants/acme/sipusers/cfguser",
        ] {
            let body = ok(&server, 200, "GET", path, key, None).to_string();
            for s in secrets {
                assert!(!body.contains(s), "GET {path} gives {s} away: {body}");
            }
            assert!(
                !body.contains("\"password\"") && !body.contains("\"signingSecret\""),
                "{path}: {body}"
            );
        }
    }
    let one = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/acme/trunks/carrier",
        &customer,
        None,
    );
    assert_eq!(one["passwordSet"], true, "{one}");
    let users = ok(
        &server,
        200,
        "GET",
        "/v1/tenants/acme/sipusers",
        &reseller,
        None,
    );
    assert!(
        users
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|u| u["passwordSet"] == true)),
        "{users}"
    );

    // The database holds the HA1 values, not the SIP passwords.
    let conn = server.db();
    let (md5, realm): (String, String) = conn
        .query_row(
            "SELECT ha1_md5, ha1_realm FROM sip_users WHERE username = 'restuser'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("HA1 row");
    assert_eq!(realm, "callplane");
    assert_eq!(md5.len(), 32, "{md5}");
    drop(conn);
    for suffix in ["", "-wal"] {
        let p = data.join(format!("callplane.db{suffix}"));
        let bytes = std::fs::read(&p).unwrap_or_default();
        for s in ["cfg-sip-secret", "rest-sip-secret"] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} in clear in {}",
                p.display()
            );
        }
    }

    // Keys may not delete themselves; the last admin key cannot go.
    let r = api(&server, "DELETE", "/v1/apikeys/acme-app", &customer, None);
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(
        r.describe().contains("may not delete itself"),
        "{}",
        r.describe()
    );
    let r = api(&server, "DELETE", "/v1/apikeys/ops", ADMIN_KEY, None);
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(
        r.describe().contains("last key of realm admin"),
        "{}",
        r.describe()
    );
    // Both are still there; another key in scope may delete the customer key.
    ok(&server, 200, "GET", "/v1/apikeys/ops", ADMIN_KEY, None);
    ok(
        &server,
        204,
        "DELETE",
        "/v1/apikeys/acme-app",
        &reseller,
        None,
    );
}
