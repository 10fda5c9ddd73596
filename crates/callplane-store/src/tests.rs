//! Tests against real SQLite files in a private temporary directory: round trips of every
//! object and of CDRs, reopening, migrations from an older schema, validation messages, and
//! the CDR writer thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

use crate::migrations::{self, SCHEMA_VERSION};
use crate::model::*;
use crate::{CdrQuery, CdrWriter, Store, StoreError, TenantUsage, DEFAULT_REALM};

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callplane-store-test-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("callplane.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample() -> Provisioning {
    Provisioning {
        tenants: vec![
            Tenant {
                name: "acme".into(),
                customer_number: 200002,
                signing_secret: Some("s3cret".into()),
                default_trunk: Some("carrier".into()),
                callstate_info_url: Some("https://acme.example/events".into()),
                reseller: Some("wholesale".into()),
            },
            Tenant {
                name: "beta".into(),
                customer_number: 200003,
                signing_secret: None,
                default_trunk: None,
                callstate_info_url: None,
                reseller: None,
            },
        ],
        numbers: vec![
            Number {
                number: "+4922155400300".into(),
                tenant: "acme".into(),
                routing_plan: "main".into(),
                callstate_info_url: Some("http://acme.example/number".into()),
            },
            Number {
                number: "100".into(),
                tenant: "beta".into(),
                routing_plan: "ivr".into(),
                callstate_info_url: None,
            },
        ],
        sip_users: vec![
            SipUser {
                tenant: "acme".into(),
                username: "alice".into(),
                password: Some("pw-alice".into()),
                display_name: Some("Alice A.".into()),
                password_set: false,
                auto_answer: false,
            },
            SipUser {
                tenant: "beta".into(),
                username: "bob.b-2".into(),
                password: Some("pw-bob".into()),
                display_name: None,
                password_set: false,
                auto_answer: false,
            },
        ],
        trunks: vec![
            Trunk {
                tenant: "acme".into(),
                name: "carrier".into(),
                host: "sip.carrier.example".into(),
                port: 5080,
                transport: Transport::Tcp,
                username: Some("acme-user".into()),
                password: Some("trunk-pw".into()),
                caller_id: Some("+4922155400300".into()),
                inbound_addresses: vec!["192.0.2.10".into(), "2001:db8::10".into()],
            },
            Trunk {
                tenant: "beta".into(),
                name: "pbx".into(),
                host: "198.51.100.7".into(),
                port: 5060,
                transport: Transport::Udp,
                username: None,
                password: None,
                caller_id: None,
                inbound_addresses: vec![],
            },
        ],
        routing_plans: vec![
            RoutingPlan {
                tenant: "acme".into(),
                name: "main".into(),
                blocks: vec![
                    json!({"blockType": "ANNOUNCEMENT", "standardAnnouncement": true, "announcementName": "welcome"}),
                    json!({"blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL",
                           "destinations": [{"destinationType": "SIP_USER", "destination": "alice", "timeout": 20}]}),
                ],
                callstate_info_url: None,
            },
            RoutingPlan {
                tenant: "beta".into(),
                name: "ivr".into(),
                blocks: vec![json!({"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"})],
                callstate_info_url: Some("https://beta.example/plan".into()),
            },
        ],
        announcements: vec![Announcement {
            tenant: "acme".into(),
            name: "welcome".into(),
            file: "prompts/welcome.wav".into(),
        }],
    }
}

fn t(h: u32, m: u32, s: u32, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 14, h, m, s).single().unwrap() + Duration::milliseconds(ms)
}

fn sample_cdr(call_id: &str, start: DateTime<Utc>) -> Cdr {
    let mut variables = BTreeMap::new();
    variables.insert("call_uuid".to_string(), call_id.to_string());
    variables.insert("digits".to_string(), "123".to_string());
    variables.insert("bridge_result".to_string(), "".to_string());
    Cdr {
        call_id: call_id.to_string(),
        sip_call_id: format!("{call_id}@198.51.100.1"),
        tenant: Some("acme".into()),
        number: "+4922155400300".into(),
        caller: "+4989123456".into(),
        start_time: start,
        answer_time: Some(start + Duration::milliseconds(2_345)),
        end_time: start + Duration::milliseconds(62_345),
        talk_time_ms: 60_000,
        hangup_cause: "NORMAL_CLEARING".into(),
        hangup_by: "caller".into(),
        sip_status: Some(200),
        recording_path: Some("/var/lib/callplane/rec/x.wav".into()),
        legs: vec![
            CdrLeg {
                leg_index: 0,
                direction: "inbound".into(),
                destination_type: None,
                destination: "+4922155400300".into(),
                start_time: start,
                answer_time: Some(start + Duration::milliseconds(100)),
                end_time: start + Duration::milliseconds(62_345),
                sip_status: Some(200),
                hangup_cause: "NORMAL_CLEARING".into(),
            },
            CdrLeg {
                leg_index: 1,
                direction: "outbound".into(),
                destination_type: Some("SIP_USER".into()),
                destination: "alice".into(),
                start_time: start + Duration::milliseconds(150),
                answer_time: None,
                end_time: start + Duration::milliseconds(20_150),
                sip_status: Some(480),
                hangup_cause: "NO_ANSWER".into(),
            },
        ],
        variables,
        lines: vec!["alice".into()],
        recordings: Vec::new(),
    }
}

/// `p` as the store gives it back: sorted by key, SIP users without their (write-only)
/// password but with `password_set`.
fn sorted(mut p: Provisioning) -> Provisioning {
    for u in &mut p.sip_users {
        u.password_set = u.password.take().is_some() || u.password_set;
    }
    p.tenants.sort_by(|a, b| a.name.cmp(&b.name));
    p.numbers.sort_by(|a, b| a.number.cmp(&b.number));
    p.sip_users.sort_by(|a, b| a.username.cmp(&b.username));
    p.trunks
        .sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    p.routing_plans
        .sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    p.announcements
        .sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    p
}

fn errors_for<'a>(errors: &'a [FieldError], object: &str, field: &str) -> Vec<&'a FieldError> {
    errors
        .iter()
        .filter(|e| e.object == object && e.field == field)
        .collect()
}

#[test]
fn store_is_clone_send_sync() {
    fn assert<T: Clone + Send + Sync + 'static>() {}
    assert::<Store>();
    assert::<CdrWriter>();
}

#[test]
fn provisioning_round_trips_and_survives_reopen() {
    let dir = TempDir::new();
    let p = sample();
    assert_eq!(p.validate(), vec![]);
    {
        let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
        store.apply_provisioning(&p).unwrap();
        assert_eq!(store.export_provisioning().unwrap(), sorted(p.clone()));
    }
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    assert_eq!(store.export_provisioning().unwrap(), sorted(p.clone()));

    let (number, tenant) = store.find_number("+4922155400300").unwrap().unwrap();
    assert_eq!(number, p.numbers[0]);
    assert_eq!(tenant, p.tenants[0]);
    let (number, tenant) = store.find_number("100").unwrap().unwrap();
    assert_eq!(
        (number.routing_plan.as_str(), tenant.name.as_str()),
        ("ivr", "beta")
    );
    assert_eq!(store.find_number("+499999").unwrap(), None);

    assert_eq!(
        store.get_tenant("beta").unwrap(),
        Some(p.tenants[1].clone())
    );
    assert_eq!(store.get_tenant("nobody").unwrap(), None);
    assert_eq!(
        store.get_routing_plan("acme", "main").unwrap(),
        Some(p.routing_plans[0].clone())
    );
    // Plans are per tenant: beta has no "main".
    assert_eq!(store.get_routing_plan("beta", "main").unwrap(), None);
    assert_eq!(
        store.get_sip_user("alice").unwrap(),
        Some(sorted(p.clone()).sip_users[0].clone())
    );
    assert_eq!(store.get_sip_user("carol").unwrap(), None);
    assert_eq!(
        store.get_trunk("acme", "carrier").unwrap(),
        Some(p.trunks[0].clone())
    );
    assert_eq!(store.get_trunk("beta", "carrier").unwrap(), None);
    assert_eq!(
        store.get_announcement("acme", "welcome").unwrap(),
        Some(p.announcements[0].clone())
    );
    assert_eq!(store.get_announcement("beta", "welcome").unwrap(), None);

    assert_eq!(store.list_tenants().unwrap().len(), 2);
    assert_eq!(store.list_numbers().unwrap()[0].number, "+4922155400300");
    assert_eq!(store.list_sip_users().unwrap().len(), 2);
    assert_eq!(store.list_trunks().unwrap(), sorted(p.clone()).trunks);
    assert_eq!(store.list_routing_plans().unwrap().len(), 2);
    assert_eq!(store.list_announcements().unwrap().len(), 1);
}

#[test]
fn apply_provisioning_updates_by_natural_key() {
    let store = Store::open_in_memory().unwrap();
    store.apply_provisioning(&sample()).unwrap();

    let mut p = sample();
    p.routing_plans[0].blocks = vec![json!({"blockType": "HANGUP", "hangupCause": "USER_BUSY"})];
    p.numbers[1].routing_plan = "ivr".into();
    p.numbers[1].callstate_info_url = Some("https://beta.example/n".into());
    p.trunks[0].inbound_addresses = vec!["203.0.113.5".into()];
    p.sip_users[0].password = Some("new".into());
    p.tenants[0].default_trunk = None;
    store.apply_provisioning(&p).unwrap();

    assert_eq!(store.export_provisioning().unwrap(), sorted(p));
    // The old address no longer maps to the trunk.
    assert_eq!(store.find_trunk_by_source_ip("192.0.2.10").unwrap(), None);
}

#[test]
fn trunk_lookup_by_source_ip() {
    let store = Store::open_in_memory().unwrap();
    store.apply_provisioning(&sample()).unwrap();
    let by = |ip: &str| {
        store
            .find_trunk_by_source_ip(ip)
            .unwrap()
            .map(|t| format!("{}/{}", t.tenant, t.name))
    };
    assert_eq!(by("192.0.2.10").as_deref(), Some("acme/carrier"));
    assert_eq!(by("::ffff:192.0.2.10").as_deref(), Some("acme/carrier"));
    assert_eq!(by("2001:0db8:0:0::10").as_deref(), Some("acme/carrier"));
    assert_eq!(by("192.0.2.11"), None);
    assert_eq!(by("not an ip"), None);
}

#[test]
fn apply_provisioning_is_all_or_nothing() {
    let store = Store::open_in_memory().unwrap();

    let mut invalid = sample();
    invalid.trunks[1].port = 0;
    match store.apply_provisioning(&invalid) {
        Err(StoreError::Invalid(errors)) => {
            assert_eq!(errors.len(), 1);
            assert_eq!(
                (errors[0].object.as_str(), errors[0].field.as_str()),
                ("trunks[1]", "port")
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    // A dangling reference is caught by the database and rolls the whole set back.
    let mut dangling = sample();
    dangling.numbers[0].routing_plan = "missing".into();
    let err = store.apply_provisioning(&dangling).unwrap_err();
    assert!(err.is_constraint_violation(), "{err}");
    assert_eq!(store.list_tenants().unwrap(), vec![]);

    // So is a default trunk that does not exist (checked at commit).
    let mut no_trunk = sample();
    no_trunk.tenants[1].default_trunk = Some("nope".into());
    assert!(store.apply_provisioning(&no_trunk).is_err());
    assert_eq!(store.list_trunks().unwrap(), vec![]);
}

#[test]
fn cdr_round_trips_with_legs_and_variables() {
    let dir = TempDir::new();
    let first = sample_cdr("6f1c0e1e-0000-4000-8000-000000000001", t(10, 0, 0, 123));
    let second = sample_cdr("6f1c0e1e-0000-4000-8000-000000000002", t(11, 30, 5, 7));
    {
        let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
        store.insert_cdr(&first).unwrap();
        store.insert_cdr(&second).unwrap();
        assert_eq!(store.get_cdr(&first.call_id).unwrap(), Some(first.clone()));

        let dup = store.insert_cdr(&first).unwrap_err();
        assert!(dup.is_constraint_violation(), "{dup}");
    }
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    let got = store.get_cdr(&first.call_id).unwrap().unwrap();
    assert_eq!(got, first);
    assert_eq!(got.legs.len(), 2);
    assert_eq!(got.variables.len(), 3);
    assert_eq!(store.get_cdr("unknown").unwrap(), None);

    assert_eq!(
        store.list_cdrs(10).unwrap(),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(store.list_cdrs(1).unwrap(), vec![second]);
    assert_eq!(store.list_cdrs(0).unwrap(), vec![]);

    // Stored as RFC 3339 UTC text with milliseconds.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let (start, answer): (String, String) = conn
        .query_row(
            "SELECT start_time, answer_time FROM cdrs WHERE call_id = ?1",
            [&first.call_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(start, "2025-03-14T10:00:00.123Z");
    assert_eq!(answer, "2025-03-14T10:00:02.468Z");
}

#[test]
fn cdr_without_optional_parts() {
    let store = Store::open_in_memory().unwrap();
    let mut cdr = sample_cdr("c-min", t(9, 0, 0, 0));
    cdr.tenant = None;
    cdr.answer_time = None;
    cdr.sip_status = None;
    cdr.recording_path = None;
    cdr.legs.clear();
    cdr.variables.clear();
    cdr.talk_time_ms = 0;
    store.insert_cdr(&cdr).unwrap();
    assert_eq!(store.get_cdr("c-min").unwrap(), Some(cdr));
}

#[test]
fn cdr_json_uses_camel_case_and_millisecond_times() {
    let cdr = sample_cdr("c-json", t(12, 0, 0, 5));
    let v = serde_json::to_value(&cdr).unwrap();
    assert_eq!(v["startTime"], "2025-03-14T12:00:00.005Z");
    assert_eq!(v["legs"][1]["answerTime"], serde_json::Value::Null);
    assert_eq!(v["talkTimeMs"], 60_000);
    let back: Cdr = serde_json::from_value(v).unwrap();
    assert_eq!(back, cdr);
}

#[test]
fn fresh_database_is_wal_with_current_schema_and_reopen_is_a_no_op() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    store.apply_provisioning(&sample()).unwrap();
    drop(store);

    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);

    // Re-running a migration would fail on CREATE TABLE; reopening must change nothing.
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.list_tenants().unwrap().len(), 2);
    drop(store);
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let again: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(again, tables);
}

#[test]
fn older_schema_is_upgraded_keeping_data() {
    let dir = TempDir::new();
    {
        let mut conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        migrations::migrate_to(&mut conn, 1, DEFAULT_REALM).unwrap();
        assert_eq!(migrations::current_version(&conn).unwrap(), 1);
        conn.execute(
            "INSERT INTO tenants (name, customer_number) VALUES ('old', 42)",
            [],
        )
        .unwrap();
        let cdr_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'cdrs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(cdr_tables, 0);
    }
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        store.get_tenant("old").unwrap().map(|t| t.customer_number),
        Some(42)
    );
    store
        .insert_cdr(&sample_cdr("after-upgrade", t(8, 0, 0, 0)))
        .unwrap();
    assert!(store.get_cdr("after-upgrade").unwrap().is_some());
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new();
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    match Store::open(&dir.db(), DEFAULT_REALM) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn object_validation_names_object_and_field() {
    let n = Number {
        number: "100".into(),
        tenant: "".into(),
        routing_plan: "main".into(),
        callstate_info_url: Some("ftp://x".into()),
    };
    let errors = n.validate();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].object, "number 100");
    assert_eq!(errors[0].field, "tenant");
    assert_eq!(errors[1].field, "callstateInfoUrl");
    assert_eq!(
        errors[1].to_string(),
        "number 100.callstateInfoUrl: must start with http:// or https://"
    );

    for bad in ["", "+", "12a", "+49 221", "++49", &"1".repeat(33), "１２"] {
        assert!(!is_valid_number(bad), "{bad:?}");
    }
    for good in ["+4922155400300", "100", "*97", "#31#", &"9".repeat(32)] {
        assert!(is_valid_number(good), "{good:?}");
    }
    for bad in ["", "a b", "al@ce", "ä", &"a".repeat(65)] {
        assert!(!is_valid_username(bad), "{bad:?}");
    }
    assert!(is_valid_username("Alice_1.x-y"));
    assert!(is_http_url("HTTPS://example.com/x"));
    assert!(!is_http_url("http://"));
    assert!(!is_http_url("example.com"));

    let tenant = Tenant {
        name: " acme".into(),
        customer_number: 0,
        signing_secret: Some(String::new()),
        default_trunk: None,
        callstate_info_url: None,
        reseller: Some("".into()),
    };
    let fields: Vec<_> = tenant.validate().into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        ["name", "customerNumber", "signingSecret", "reseller"]
    );

    let user = SipUser {
        tenant: "acme".into(),
        username: "bad user".into(),
        password: Some("".into()),
        display_name: Some("Evil\r\nVia: x".into()),
        password_set: false,
        auto_answer: false,
    };
    let fields: Vec<_> = user.validate().into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["username", "password", "displayName"]);

    let trunk = Trunk {
        tenant: "acme".into(),
        name: "t".into(),
        host: "bad host".into(),
        port: 0,
        transport: Transport::Udp,
        username: None,
        password: None,
        caller_id: Some("abc".into()),
        inbound_addresses: vec!["10.0.0.1".into(), "10.0.0.300".into()],
    };
    let errors = trunk.validate();
    assert_eq!(errors[0].object, "trunk acme/t");
    let fields: Vec<_> = errors.into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["host", "port", "callerId", "inboundAddresses[1]"]);
}

#[test]
fn provisioning_validation_checks_references_and_duplicates() {
    let mut p = sample();
    p.numbers.push(Number {
        number: "100".into(),
        tenant: "acme".into(),
        routing_plan: "main".into(),
        callstate_info_url: None,
    });
    p.numbers.push(Number {
        number: "200".into(),
        tenant: "ghost".into(),
        routing_plan: "main".into(),
        callstate_info_url: None,
    });
    p.numbers.push(Number {
        number: "300".into(),
        tenant: "beta".into(),
        routing_plan: "main".into(),
        callstate_info_url: None,
    });
    p.sip_users.push(SipUser {
        tenant: "beta".into(),
        username: "alice".into(),
        password: Some("x".into()),
        display_name: None,
        password_set: false,
        auto_answer: false,
    });
    p.routing_plans.push(RoutingPlan {
        tenant: "acme".into(),
        name: "main".into(),
        blocks: vec![],
        callstate_info_url: None,
    });
    p.tenants[1].default_trunk = Some("carrier".into());
    p.tenants.push(Tenant {
        name: "gamma".into(),
        customer_number: 200002,
        signing_secret: None,
        default_trunk: None,
        callstate_info_url: None,
        reseller: None,
    });
    p.trunks[1].inbound_addresses = vec!["::ffff:192.0.2.10".into()];
    p.announcements[0].tenant = "nobody".into();
    p.numbers[0].number = "+49-221".into();

    let errors = p.validate();
    let expect = [
        ("numbers[0]", "number", "E.164"),
        ("numbers[2]", "number", "duplicate of numbers[1]"),
        ("numbers[3]", "tenant", "tenant \"ghost\" is not defined"),
        (
            "numbers[4]",
            "routingPlan",
            "routing plan \"main\" is not defined for tenant \"beta\"",
        ),
        ("sipUsers[2]", "username", "duplicate of sipUsers[0]"),
        ("routingPlans[2]", "name", "duplicate of routingPlans[0]"),
        (
            "tenants[1]",
            "defaultTrunk",
            "trunk \"carrier\" is not defined for tenant \"beta\"",
        ),
        (
            "tenants[2]",
            "customerNumber",
            "same customerNumber as tenants[0]",
        ),
        (
            "trunks[1]",
            "inboundAddresses[0]",
            "already used by trunks[0]",
        ),
        (
            "announcements[0]",
            "tenant",
            "tenant \"nobody\" is not defined",
        ),
    ];
    for (object, field, message) in expect {
        let found = errors_for(&errors, object, field);
        assert!(
            found.iter().any(|e| e.message.contains(message)),
            "no {object}.{field} ~ {message:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
}

#[test]
fn toml_config_parses_with_defaults_and_rejects_unknown_fields() {
    let text = r##"
[[tenants]]
name = "acme"
customerNumber = 200002
defaultTrunk = "carrier"

[[trunks]]
tenant = "acme"
name = "carrier"
host = "sip.example"
inboundAddresses = ["192.0.2.1"]

[[trunks]]
tenant = "acme"
name = "tls"
host = "sip2.example"
port = 5061
transport = "tcp"

[[sipUsers]]
tenant = "acme"
username = "alice"
password = "pw"

[[routingPlans]]
tenant = "acme"
name = "main"
blocks = [
  { blockType = "ANNOUNCEMENT", standardAnnouncement = true, announcementName = "welcome" },
  { blockType = "COLLECT_DIGITS", variableName = "digits", minDigits = 1, maxDigits = 3, terminator = "#" },
]

[[numbers]]
number = "+4922155400300"
tenant = "acme"
routingPlan = "main"
"##;
    let p: Provisioning = toml::from_str(text).unwrap();
    assert_eq!(p.validate(), vec![]);
    assert_eq!(p.trunks[0].port, 5060);
    assert_eq!(p.trunks[0].transport, Transport::Udp);
    assert_eq!(p.trunks[1].transport, Transport::Tcp);
    assert!(p.trunks[1].inbound_addresses.is_empty());
    assert_eq!(p.routing_plans[0].blocks[1]["maxDigits"], 3);
    assert!(p.announcements.is_empty());

    let store = Store::open_in_memory().unwrap();
    store.apply_provisioning(&p).unwrap();
    assert_eq!(
        store.get_routing_plan("acme", "main").unwrap(),
        Some(p.routing_plans[0].clone())
    );

    let unknown = "[[tenants]]\nname = \"a\"\ncustomerNumber = 1\ncustomer_number = 2\n";
    let err = toml::from_str::<Provisioning>(unknown)
        .unwrap_err()
        .to_string();
    assert!(err.contains("customer_number"), "{err}");
    let bad_transport =
        "[[trunks]]\ntenant = \"a\"\nname = \"b\"\nhost = \"h\"\ntransport = \"UDP\"\n";
    assert!(toml::from_str::<Provisioning>(bad_transport).is_err());
    assert!(toml::from_str::<Provisioning>("[[gateways]]\nname = \"x\"\n").is_err());
}

#[test]
fn debug_output_hides_secrets() {
    let p = sample();
    let text = format!("{:?} {:?} {:?}", p.tenants[0], p.sip_users[0], p.trunks[0]);
    for secret in ["s3cret", "pw-alice", "trunk-pw"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("acme-user"));
}

#[test]
fn cdr_writer_writes_everything_before_flush_and_shutdown() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    let writer = CdrWriter::spawn(store.clone());

    let threads: Vec<_> = (0..4)
        .map(|n| {
            let w = writer.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let id = uuid::Uuid::new_v4().to_string();
                    w.write(sample_cdr(&id, t(10, n, i, 0))).unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    writer.flush();
    assert_eq!(store.list_cdrs(1000).unwrap().len(), 100);

    // A failed insert (duplicate) is logged and does not stop the thread.
    let dup = store.list_cdrs(1).unwrap().remove(0);
    writer.write(dup).unwrap();
    writer
        .write(sample_cdr("after-dup", t(12, 0, 0, 0)))
        .unwrap();

    writer.shutdown();
    assert!(store.get_cdr("after-dup").unwrap().is_some());
    // After shutdown, writes happen synchronously and report their result.
    writer.write(sample_cdr("sync", t(13, 0, 0, 0))).unwrap();
    assert!(store.get_cdr("sync").unwrap().is_some());
    assert!(writer.write(sample_cdr("sync", t(13, 0, 0, 0))).is_err());
    writer.shutdown();
}

#[test]
fn a_batch_of_cdrs_keeps_the_good_ones_when_one_fails() {
    let store = Store::open_in_memory().unwrap();
    store.insert_cdr(&sample_cdr("b-1", t(9, 0, 0, 0))).unwrap();
    let a = sample_cdr("b-0", t(9, 0, 1, 0));
    let dup = sample_cdr("b-1", t(9, 0, 2, 0));
    let c = sample_cdr("b-2", t(9, 0, 3, 0));
    let results = store.insert_cdrs(&[&a, &dup, &c]).unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(results[1].as_ref().unwrap_err().is_constraint_violation());
    assert_eq!(store.list_cdrs(10).unwrap().len(), 3);
    // The failed one left nothing half-written: the original b-1 is intact, legs and all.
    let kept = store.get_cdr("b-1").unwrap().unwrap();
    assert_eq!(kept.start_time, t(9, 0, 0, 0));
    assert_eq!(kept.legs.len(), sample_cdr("x", t(9, 0, 0, 0)).legs.len());
    assert_eq!(
        store.get_cdr("b-2").unwrap().unwrap().legs.len(),
        kept.legs.len()
    );
}

#[test]
fn a_flood_of_cdrs_is_written_in_few_commits_and_whole() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    let writer = CdrWriter::spawn(store.clone());
    let started = std::time::Instant::now();
    for i in 0..5000u32 {
        writer
            .write(sample_cdr(
                &format!("flood-{i}"),
                t(16, (i / 60) % 60, i % 60, 0),
            ))
            .unwrap();
    }
    writer.flush();
    let elapsed = started.elapsed();
    assert_eq!(store.list_cdrs(10_000).unwrap().len(), 5000);
    // synchronous=FULL: 5000 commits would take seconds of syncs; batches take a fraction.
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}

#[test]
fn dropping_the_last_writer_handle_writes_the_queue() {
    let store = Store::open_in_memory().unwrap();
    let writer = CdrWriter::spawn(store.clone());
    for i in 0..20 {
        writer
            .write(sample_cdr(&format!("drop-{i}"), t(14, 0, i, 0)))
            .unwrap();
    }
    drop(writer);
    assert_eq!(store.list_cdrs(100).unwrap().len(), 20);
}

#[test]
fn cdr_writer_waits_out_another_process_holding_the_write_lock() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    let writer = CdrWriter::spawn(store.clone());

    let other = rusqlite::Connection::open(dir.db()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    writer
        .write(sample_cdr("while-locked", t(15, 0, 0, 0)))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    other.execute_batch("COMMIT").unwrap();

    writer.flush();
    assert!(store.get_cdr("while-locked").unwrap().is_some());
}

fn one(f: impl FnOnce(&mut Provisioning)) -> Provisioning {
    let mut p = Provisioning::default();
    f(&mut p);
    p
}

#[test]
fn create_refuses_existing_objects_and_writes_nothing() {
    let store = Store::open_in_memory().unwrap();
    let p = sample();
    store.create_provisioning(&p).unwrap();
    assert_eq!(store.export_provisioning().unwrap(), sorted(p.clone()));

    // A set with one new object and one existing one: refused as a whole.
    let mut again = one(|q| q.routing_plans.push(p.routing_plans[0].clone()));
    again.routing_plans.insert(
        0,
        RoutingPlan {
            tenant: "acme".into(),
            name: "fresh".into(),
            blocks: vec![],
            callstate_info_url: None,
        },
    );
    match store.create_provisioning(&again) {
        Err(StoreError::Exists { object }) => assert_eq!(object, "routing plan acme/main"),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(store.get_routing_plan("acme", "fresh").unwrap(), None);

    for (p, label) in [
        (one(|q| q.tenants.push(p.tenants[1].clone())), "tenant beta"),
        (one(|q| q.numbers.push(p.numbers[1].clone())), "number 100"),
        (
            one(|q| q.sip_users.push(p.sip_users[0].clone())),
            "sip user alice",
        ),
        (
            one(|q| q.trunks.push(p.trunks[1].clone())),
            "trunk beta/pbx",
        ),
        (
            one(|q| q.announcements.push(p.announcements[0].clone())),
            "announcement acme/welcome",
        ),
    ] {
        match store.create_provisioning(&p) {
            Err(StoreError::Exists { object }) => assert_eq!(object, label),
            other => panic!("expected Exists for {label}, got {other:?}"),
        }
    }
    // Field errors come before the existence check.
    let mut bad = p.numbers[0].clone();
    bad.number = "12ab".into();
    assert!(matches!(
        store.create_provisioning(&one(|q| q.numbers.push(bad))),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn per_tenant_lists_and_lookups() {
    let store = Store::open_in_memory().unwrap();
    let p = sample();
    store.apply_provisioning(&p).unwrap();
    let names = |v: Vec<Number>| v.into_iter().map(|n| n.number).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_numbers_of("acme").unwrap()),
        ["+4922155400300"]
    );
    assert_eq!(names(store.list_numbers_of("beta").unwrap()), ["100"]);
    assert!(store.list_numbers_of("nobody").unwrap().is_empty());
    assert_eq!(
        store.list_sip_users_of("beta").unwrap(),
        vec![sorted(p.clone()).sip_users[1].clone()]
    );
    assert_eq!(
        store.list_trunks_of("acme").unwrap(),
        vec![p.trunks[0].clone()]
    );
    assert_eq!(
        store.list_routing_plans_of("beta").unwrap(),
        vec![p.routing_plans[1].clone()]
    );
    assert_eq!(
        store.list_announcements_of("acme").unwrap(),
        p.announcements.clone()
    );
    assert!(store.list_announcements_of("beta").unwrap().is_empty());
    assert_eq!(
        store.list_tenants_of_reseller("wholesale").unwrap(),
        vec![p.tenants[0].clone()]
    );
    assert!(store.list_tenants_of_reseller("other").unwrap().is_empty());
    assert_eq!(store.get_number("100").unwrap(), Some(p.numbers[1].clone()));
    assert_eq!(store.get_number("101").unwrap(), None);
    assert_eq!(
        store
            .find_tenant_by_customer_number(200003)
            .unwrap()
            .map(|t| t.name),
        Some("beta".to_string())
    );
    assert_eq!(store.find_tenant_by_customer_number(1).unwrap(), None);
    assert_eq!(
        store.numbers_using_plan("acme", "main").unwrap(),
        ["+4922155400300"]
    );
    assert!(store.numbers_using_plan("beta", "main").unwrap().is_empty());
}

#[test]
fn deletes_report_absence_and_are_refused_while_referenced() {
    let store = Store::open_in_memory().unwrap();
    let p = sample();
    store.apply_provisioning(&p).unwrap();

    let usage = store.tenant_usage("acme").unwrap();
    assert_eq!(
        usage,
        TenantUsage {
            numbers: 1,
            sip_users: 1,
            trunks: 1,
            routing_plans: 1,
            announcements: 1
        }
    );
    assert_eq!(
        usage.describe(),
        "1 number, 1 SIP user, 1 trunk, 1 routing plan, 1 announcement"
    );
    // A tenant that still owns objects, a plan a number routes to, a tenant's default trunk.
    let refused = store.delete_tenant("acme").unwrap_err();
    assert!(refused.is_constraint_violation(), "{refused}");
    let refused = store.delete_routing_plan("acme", "main").unwrap_err();
    assert!(refused.is_constraint_violation(), "{refused}");
    let refused = store.delete_trunk("acme", "carrier").unwrap_err();
    assert!(refused.is_constraint_violation(), "{refused}");
    assert_eq!(store.export_provisioning().unwrap(), sorted(p.clone()));

    // In dependency order everything goes, and a second delete reports absence.
    assert!(store.delete_number("+4922155400300").unwrap());
    assert!(!store.delete_number("+4922155400300").unwrap());
    assert!(store.delete_routing_plan("acme", "main").unwrap());
    assert!(store.delete_sip_user("alice").unwrap());
    assert!(store.delete_announcement("acme", "welcome").unwrap());
    let mut acme = p.tenants[0].clone();
    acme.default_trunk = None;
    store
        .apply_provisioning(&one(|q| q.tenants.push(acme)))
        .unwrap();
    assert!(store.delete_trunk("acme", "carrier").unwrap());
    // The trunk's inbound addresses went with it.
    assert_eq!(store.find_trunk_by_source_ip("192.0.2.10").unwrap(), None);
    assert!(store.tenant_usage("acme").unwrap().is_empty());
    assert!(store.delete_tenant("acme").unwrap());
    assert!(!store.delete_tenant("acme").unwrap());
    assert_eq!(store.get_tenant("acme").unwrap(), None);
    assert!(!store.delete_trunk("acme", "carrier").unwrap());
    assert!(!store.delete_announcement("acme", "welcome").unwrap());
}

fn hash(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn key(name: &str, realm: ApiRealm) -> ApiKey {
    ApiKey {
        name: name.into(),
        realm,
        tenant: None,
        reseller: None,
        sip_user: None,
        rate_limit: None,
        created: None,
    }
}

#[test]
fn api_keys_round_trip_by_hash_and_name() {
    let store = Store::open_in_memory().unwrap();
    store.apply_provisioning(&sample()).unwrap();
    let before = Utc::now() - Duration::seconds(1);
    let admin = store
        .create_api_key(&key("ops", ApiRealm::Admin), &hash('a'))
        .unwrap();
    assert_eq!(admin.name, "ops");
    assert!(admin.created.is_some_and(|c| c >= before));
    let customer = ApiKey {
        tenant: Some("acme".into()),
        rate_limit: Some(7),
        ..key("acme-app", ApiRealm::Customer)
    };
    store.create_api_key(&customer, &hash('b')).unwrap();
    let account = ApiKey {
        tenant: Some("acme".into()),
        sip_user: Some("alice".into()),
        ..key("alice-phone", ApiRealm::Account)
    };
    store.create_api_key(&account, &hash('c')).unwrap();
    let reseller = ApiKey {
        reseller: Some("wholesale".into()),
        ..key("ws", ApiRealm::Reseller)
    };
    store.create_api_key(&reseller, &hash('d')).unwrap();

    let found = store.find_api_key(&hash('b')).unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.realm),
        ("acme-app", ApiRealm::Customer)
    );
    assert_eq!(found.tenant.as_deref(), Some("acme"));
    assert_eq!(found.rate_limit, Some(7));
    assert_eq!(admin.rate_limit, None);
    assert_eq!(store.find_api_key(&hash('e')).unwrap(), None);
    assert_eq!(
        store
            .get_api_key("ws")
            .unwrap()
            .unwrap()
            .reseller
            .as_deref(),
        Some("wholesale")
    );
    let names: Vec<String> = store
        .list_api_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["acme-app", "alice-phone", "ops", "ws"]);

    // Names and hashes are unique.
    match store.create_api_key(&key("ops", ApiRealm::Admin), &hash('f')) {
        Err(StoreError::Exists { object }) => assert_eq!(object, "api key ops"),
        other => panic!("expected Exists, got {other:?}"),
    }
    let dup = store
        .create_api_key(&key("other", ApiRealm::Admin), &hash('a'))
        .unwrap_err();
    assert!(dup.is_constraint_violation(), "{dup}");

    // Upsert by name replaces the secret and keeps the creation time.
    let again = store
        .upsert_api_key(&key("ops", ApiRealm::Admin), &hash('9'))
        .unwrap();
    assert_eq!(again.created, admin.created);
    assert_eq!(store.find_api_key(&hash('a')).unwrap(), None);
    assert_eq!(store.find_api_key(&hash('9')).unwrap().unwrap().name, "ops");

    // The last admin key is refused; with another one it may go.
    match store.delete_api_key("ops") {
        Err(StoreError::Refused(why)) => assert!(why.contains("last key of realm admin"), "{why}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(store.get_api_key("ops").unwrap().is_some());
    store
        .create_api_key(&key("ops2", ApiRealm::Admin), &hash('8'))
        .unwrap();
    assert!(store.delete_api_key("ops").unwrap());
    assert!(!store.delete_api_key("ops").unwrap());
    // Non-admin keys may all go.
    assert!(store.delete_api_key("ws").unwrap());
}

#[test]
fn api_keys_are_validated_and_die_with_their_tenant_or_sip_user() {
    let store = Store::open_in_memory().unwrap();
    store.apply_provisioning(&sample()).unwrap();
    // Realm-required fields, fields the realm does not use, and the hash's shape.
    let errors = match store.create_api_key(&key("c", ApiRealm::Customer), "ABC") {
        Err(StoreError::Invalid(e)) => e,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["tenant", "keySha256"]);
    let admin_with_tenant = ApiKey {
        tenant: Some("acme".into()),
        ..key("a", ApiRealm::Admin)
    };
    let fields: Vec<String> = admin_with_tenant
        .validate()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["tenant"]);
    assert_eq!(
        key("r", ApiRealm::Reseller).validate()[0].message,
        "is required for realm reseller"
    );
    assert_eq!(key("u", ApiRealm::Account).validate()[0].field, "sipUser");
    // A key for a tenant that does not exist is refused by the database.
    let ghost = ApiKey {
        tenant: Some("ghost".into()),
        ..key("g", ApiRealm::Customer)
    };
    assert!(store
        .create_api_key(&ghost, &hash('1'))
        .unwrap_err()
        .is_constraint_violation());

    let account = ApiKey {
        tenant: Some("beta".into()),
        sip_user: Some("bob.b-2".into()),
        ..key("bob-phone", ApiRealm::Account)
    };
    store.create_api_key(&account, &hash('2')).unwrap();
    let customer = ApiKey {
        tenant: Some("beta".into()),
        ..key("beta-app", ApiRealm::Customer)
    };
    store.create_api_key(&customer, &hash('3')).unwrap();
    assert!(store.delete_sip_user("bob.b-2").unwrap());
    assert_eq!(store.get_api_key("bob-phone").unwrap(), None);
    assert!(store.get_api_key("beta-app").unwrap().is_some());
    assert!(store.delete_number("100").unwrap());
    assert!(store.delete_routing_plan("beta", "ivr").unwrap());
    assert!(store.delete_trunk("beta", "pbx").unwrap());
    assert!(store.delete_tenant("beta").unwrap());
    assert_eq!(store.get_api_key("beta-app").unwrap(), None);
}

#[test]
fn version_two_database_gains_resellers_and_api_keys() {
    let dir = TempDir::new();
    {
        let mut conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        migrations::migrate_to(&mut conn, 2, DEFAULT_REALM).unwrap();
        conn.execute(
            "INSERT INTO tenants (name, customer_number) VALUES ('old', 42)",
            [],
        )
        .unwrap();
    }
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let old = store.get_tenant("old").unwrap().unwrap();
    assert_eq!(old.reseller, None);
    let mut moved = old.clone();
    moved.reseller = Some("wholesale".into());
    store
        .apply_provisioning(&one(|q| q.tenants.push(moved.clone())))
        .unwrap();
    assert_eq!(store.get_tenant("old").unwrap(), Some(moved));
    store
        .create_api_key(&key("ops", ApiRealm::Admin), &hash('a'))
        .unwrap();
}

#[test]
fn data_directory_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new();
    let data = dir.0.join("data").join("nested");
    crate::create_private_dir(&data).unwrap();
    assert_eq!(mode(&data), 0o700);
    let db = data.join("callplane.db");
    let store = Store::open(&db, DEFAULT_REALM).unwrap();
    store.apply_provisioning(&sample()).unwrap();
    assert_eq!(mode(&db), 0o600);
    let wal = data.join("callplane.db-wal");
    let shm = data.join("callplane.db-shm");
    assert!(wal.exists() && shm.exists(), "WAL mode makes -wal and -shm");
    assert_eq!(mode(&wal), 0o600);
    assert_eq!(mode(&shm), 0o600);
    drop(store);

    // An older installation's world-readable files are narrowed at open.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    crate::create_private_dir(&data).unwrap();
    let _store = Store::open(&db, DEFAULT_REALM).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&wal), 0o600);
}

/// HA1 of `user:realm:password`, as the registrar computes it (RFC 7616).
fn ha1(algo: &str, input: &str) -> String {
    use sha2::Digest;
    let bytes: Vec<u8> = match algo {
        "md5" => md5::Md5::digest(input.as_bytes()).to_vec(),
        _ => sha2::Sha256::digest(input.as_bytes()).to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sip_passwords_are_kept_as_ha1_only() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), "example.org").unwrap();
    store.apply_provisioning(&sample()).unwrap();
    let c = store.sip_user_credentials("alice").unwrap().unwrap();
    assert_eq!(c.ha1_md5, ha1("md5", "alice:example.org:pw-alice"));
    assert_eq!(c.ha1_sha256, ha1("sha256", "alice:example.org:pw-alice"));
    assert_eq!(c.realm, "example.org");
    let u = store.get_sip_user("alice").unwrap().unwrap();
    assert_eq!((u.password, u.password_set), (None, true));

    // Without a password, an update keeps the stored HA1; a new user needs one.
    let mut p = sample();
    p.sip_users[0].password = None;
    p.sip_users[0].display_name = Some("Alice B.".into());
    store.apply_provisioning(&p).unwrap();
    assert_eq!(store.sip_user_credentials("alice").unwrap(), Some(c));
    let u = store.get_sip_user("alice").unwrap().unwrap();
    assert_eq!(u.display_name.as_deref(), Some("Alice B."));
    p.sip_users[0].username = "newbie".into();
    match store.apply_provisioning(&p) {
        Err(StoreError::Invalid(e)) => assert_eq!(e[0].field, "password"),
        other => panic!("a new user without password must be refused: {other:?}"),
    }
    drop(store);

    // The clear password is nowhere in the file.
    let raw = std::fs::read(dir.db()).unwrap();
    let wal = std::fs::read(dir.0.join("callplane.db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(!bytes.windows(8).any(|w| w == b"pw-alice"));
    }

    // Another realm: the users whose HA1 no longer verifies are named, in a warning at open.
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let store = tracing::subscriber::with_default(subscriber, || {
        Store::open(&dir.db(), "other.example").unwrap()
    });
    assert_eq!(
        store.sip_users_of_other_realm().unwrap(),
        ["alice", "bob.b-2"]
    );
    let text = log.text();
    assert!(
        text.contains("WARN")
            && text.contains("users=alice, bob.b-2")
            && text.contains("password is set again"),
        "{text}"
    );
    // Setting the password again computes HA1 for the new realm.
    let mut p = sample();
    p.sip_users.retain(|u| u.username == "alice");
    store.apply_provisioning(&p).unwrap();
    assert_eq!(store.sip_users_of_other_realm().unwrap(), ["bob.b-2"]);
    let c = store.sip_user_credentials("alice").unwrap().unwrap();
    assert_eq!(c.ha1_md5, ha1("md5", "alice:other.example:pw-alice"));
}

/// A tracing writer into memory.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> CapturedLog {
        self.clone()
    }
}

#[test]
fn migration_4_hashes_clear_sip_passwords_and_drops_them() {
    let dir = TempDir::new();
    {
        let mut conn = rusqlite::Connection::open(dir.db()).unwrap();
        migrations::migrate_to(&mut conn, 3, DEFAULT_REALM).unwrap();
        conn.execute_batch(
            "INSERT INTO tenants (name, customer_number) VALUES ('acme', 1);
             INSERT INTO sip_users (username, tenant, password) VALUES ('alice', 'acme', 's3cret');
             INSERT INTO api_keys (name, key_sha256, realm, sip_user, created)
               VALUES ('k', '0000000000000000000000000000000000000000000000000000000000000000',
                       'account', 'alice', '2026-01-01T00:00:00Z');",
        )
        .unwrap();
    }
    let store = Store::open(&dir.db(), "pbx.example").unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let c = store.sip_user_credentials("alice").unwrap().unwrap();
    assert_eq!(c.ha1_md5, ha1("md5", "alice:pbx.example:s3cret"));
    assert_eq!(c.ha1_sha256, ha1("sha256", "alice:pbx.example:s3cret"));
    // The account key of the user survived the column drop.
    assert!(store.get_api_key("k").unwrap().is_some());
    let cols: Vec<String> = store
        .conn()
        .prepare("SELECT name FROM pragma_table_info('sip_users')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!cols.iter().any(|c| c == "password"), "{cols:?}");
}

#[test]
fn sip_directory_follows_own_writes_at_once() {
    let store = Store::open_in_memory().unwrap();
    let d = store.sip_directory();
    assert_eq!(d.sizes(), (0, 0, 0));
    store.apply_provisioning(&sample()).unwrap();
    let d = store.sip_directory();
    assert_eq!(d.sizes(), (2, 2, 2));
    let alice = d.credentials("alice").unwrap();
    assert_eq!(alice.realm, DEFAULT_REALM);
    assert_eq!(
        alice.ha1_md5,
        ha1("md5", &format!("alice:{DEFAULT_REALM}:pw-alice"))
    );
    assert!(d.credentials("nobody").is_none());
    assert!(d.is_trunk_address("192.0.2.10".parse().unwrap()));
    assert!(d.is_trunk_address("::ffff:192.0.2.10".parse().unwrap()));
    assert!(d.is_trunk_address("2001:db8::10".parse().unwrap()));
    assert!(!d.is_trunk_address("192.0.2.11".parse().unwrap()));
    assert!(d.has_number("100") && !d.has_number("101"));

    assert!(store.delete_number("100").unwrap());
    assert!(!store.sip_directory().has_number("100"));
    assert!(store.delete_sip_user("alice").unwrap());
    assert!(store.sip_directory().credentials("alice").is_none());
    // A trunk's addresses go with it (the cascade's triggers count too).
    let mut p = sample();
    p.tenants[0].default_trunk = None;
    store
        .apply_provisioning(&one(|q| q.tenants = p.tenants.clone()))
        .unwrap();
    assert!(store.delete_trunk("acme", "carrier").unwrap());
    assert!(!store
        .sip_directory()
        .is_trunk_address("192.0.2.10".parse().unwrap()));
}

#[test]
fn sip_directory_sees_another_process_s_writes_through_the_watcher() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    store.apply_provisioning(&sample()).unwrap();
    store
        .watch_directory(std::time::Duration::from_millis(20))
        .unwrap();
    let before = store.sip_directory().version();
    // Another process (a CLI) adds a number behind our back.
    let other = rusqlite::Connection::open(dir.db()).unwrap();
    other
        .execute(
            "INSERT INTO numbers (number, tenant, routing_plan) VALUES ('555', 'beta', 'ivr')",
            [],
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !store.sip_directory().has_number("555") {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(store.sip_directory().version() > before);
}

#[test]
fn reads_and_the_directory_do_not_wait_for_a_held_write_lock() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).unwrap();
    store.apply_provisioning(&sample()).unwrap();
    let writer = CdrWriter::spawn(store.clone());

    // Another process holds the write lock, and our CDR writer is stuck behind it.
    let other = rusqlite::Connection::open(dir.db()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    other
        .execute(
            "UPDATE directory_version SET version = version WHERE id = 1",
            [],
        )
        .unwrap();
    writer.write(sample_cdr("queued", t(16, 0, 0, 0))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));

    let started = std::time::Instant::now();
    for _ in 0..100 {
        assert!(store.find_number("100").unwrap().is_some());
        assert!(store.get_routing_plan("beta", "ivr").unwrap().is_some());
        assert!(store.sip_directory().credentials("alice").is_some());
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(500),
        "reads waited for the lock: {took:?}"
    );
    other.execute_batch("COMMIT").unwrap();
    writer.flush();
    assert!(store.get_cdr("queued").unwrap().is_some());
}

#[test]
fn cdrs_are_queried_by_tenant_line_number_time_and_pages() {
    let dir = TempDir::new();
    let store = Store::open(&dir.db(), DEFAULT_REALM).expect("open");
    let t0 = Utc::now() - Duration::hours(1);
    for i in 0..5 {
        let mut c = sample_cdr(&format!("call-{i}"), t0 + Duration::minutes(i));
        if i == 4 {
            c.tenant = Some("other".into());
            c.lines = vec!["bob".into()];
            c.number = "200".into();
        }
        store.insert_cdr(&c).expect("insert");
    }
    let ids = |v: Vec<Cdr>| v.into_iter().map(|c| c.call_id).collect::<Vec<_>>();
    let all = store
        .query_cdrs(&CdrQuery {
            limit: 10,
            ..CdrQuery::default()
        })
        .expect("query");
    assert_eq!(ids(all), ["call-4", "call-3", "call-2", "call-1", "call-0"]);
    let page = store
        .query_cdrs(&CdrQuery {
            tenants: Some(vec!["acme".into()]),
            limit: 2,
            ..CdrQuery::default()
        })
        .expect("query");
    assert_eq!(page[0].lines, ["alice"]);
    let last = page.last().map(|c| (c.start_time, c.call_id.clone()));
    assert_eq!(ids(page), ["call-3", "call-2"]);
    let next = store
        .query_cdrs(&CdrQuery {
            tenants: Some(vec!["acme".into()]),
            limit: 2,
            after: last,
            ..CdrQuery::default()
        })
        .expect("query");
    assert_eq!(ids(next), ["call-1", "call-0"]);
    let bob = store
        .query_cdrs(&CdrQuery {
            line: Some("bob".into()),
            limit: 10,
            ..CdrQuery::default()
        })
        .expect("query");
    assert_eq!(ids(bob), ["call-4"]);
    let by_number = store
        .query_cdrs(&CdrQuery {
            number: Some("200".into()),
            limit: 10,
            ..CdrQuery::default()
        })
        .expect("query");
    assert_eq!(ids(by_number), ["call-4"]);
    let window = store
        .query_cdrs(&CdrQuery {
            from: Some(t0 + Duration::minutes(1)),
            to: Some(t0 + Duration::minutes(3)),
            limit: 10,
            ..CdrQuery::default()
        })
        .expect("query");
    assert_eq!(ids(window), ["call-2", "call-1"]);
    let none = store
        .query_cdrs(&CdrQuery {
            tenants: Some(vec![]),
            limit: 10,
            ..CdrQuery::default()
        })
        .expect("query");
    assert!(none.is_empty());
}
