//! Embedded schema migrations. `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`;
//! the version lives in `PRAGMA user_version`. Never edit a released entry: append a new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::StoreError;

/// The SQL of each schema version, in order. Compiled into the binary.
pub const MIGRATIONS: &[&str] = &[
    // 1: provisioned objects.
    r#"
CREATE TABLE tenants (
    name               TEXT PRIMARY KEY NOT NULL,
    customer_number    INTEGER NOT NULL UNIQUE,
    signing_secret     TEXT,
    default_trunk      TEXT,
    callstate_info_url TEXT,
    -- Deferred because tenants and trunks reference each other and are written together.
    FOREIGN KEY (name, default_trunk) REFERENCES trunks (tenant, name)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE trunks (
    tenant    TEXT NOT NULL REFERENCES tenants (name),
    name      TEXT NOT NULL,
    host      TEXT NOT NULL,
    port      INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    transport TEXT NOT NULL CHECK (transport IN ('udp', 'tcp')),
    username  TEXT,
    password  TEXT,
    caller_id TEXT,
    PRIMARY KEY (tenant, name)
);

-- One row per inbound source address, indexed: looked up for every INVITE.
CREATE TABLE trunk_inbound_addresses (
    tenant   TEXT NOT NULL,
    trunk    TEXT NOT NULL,
    position INTEGER NOT NULL,
    address  TEXT NOT NULL,
    PRIMARY KEY (tenant, trunk, position),
    FOREIGN KEY (tenant, trunk) REFERENCES trunks (tenant, name) ON DELETE CASCADE
);
CREATE INDEX trunk_inbound_addresses_by_address ON trunk_inbound_addresses (address);

CREATE TABLE routing_plans (
    tenant             TEXT NOT NULL REFERENCES tenants (name),
    name               TEXT NOT NULL,
    blocks             TEXT NOT NULL CHECK (json_valid(blocks)),
    callstate_info_url TEXT,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE numbers (
    number             TEXT PRIMARY KEY NOT NULL,
    tenant             TEXT NOT NULL REFERENCES tenants (name),
    routing_plan       TEXT NOT NULL,
    callstate_info_url TEXT,
    FOREIGN KEY (tenant, routing_plan) REFERENCES routing_plans (tenant, name)
);
CREATE INDEX numbers_by_plan ON numbers (tenant, routing_plan);

CREATE TABLE sip_users (
    username     TEXT PRIMARY KEY NOT NULL,
    tenant       TEXT NOT NULL REFERENCES tenants (name),
    password     TEXT NOT NULL,
    display_name TEXT
);
CREATE INDEX sip_users_by_tenant ON sip_users (tenant);

CREATE TABLE announcements (
    tenant TEXT NOT NULL REFERENCES tenants (name),
    name   TEXT NOT NULL,
    file   TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
"#,
    // 2: call detail records. No foreign key to tenants: a CDR must be kept even when its
    // tenant is unknown or later removed, and no CHECKs: a finished call is never rejected.
    r#"
CREATE TABLE cdrs (
    call_id        TEXT PRIMARY KEY NOT NULL,
    sip_call_id    TEXT NOT NULL,
    tenant         TEXT,
    number         TEXT NOT NULL,
    caller         TEXT NOT NULL,
    start_time     TEXT NOT NULL,
    answer_time    TEXT,
    end_time       TEXT NOT NULL,
    talk_time_ms   INTEGER NOT NULL,
    hangup_cause   TEXT NOT NULL,
    hangup_by      TEXT NOT NULL,
    sip_status     INTEGER,
    recording_path TEXT
);
CREATE INDEX cdrs_by_start_time ON cdrs (start_time);
CREATE INDEX cdrs_by_tenant_start_time ON cdrs (tenant, start_time);

CREATE TABLE cdr_legs (
    call_id          TEXT NOT NULL REFERENCES cdrs (call_id) ON DELETE CASCADE,
    leg_index        INTEGER NOT NULL,
    direction        TEXT NOT NULL,
    destination_type TEXT,
    destination      TEXT NOT NULL,
    start_time       TEXT NOT NULL,
    answer_time      TEXT,
    end_time         TEXT NOT NULL,
    sip_status       INTEGER,
    hangup_cause     TEXT NOT NULL,
    PRIMARY KEY (call_id, leg_index)
);

CREATE TABLE cdr_variables (
    call_id TEXT NOT NULL REFERENCES cdrs (call_id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (call_id, name)
);
"#,
    // 3: resellers own tenants; API keys (only the SHA-256 of the secret is kept). A key goes
    // away with its tenant or SIP user, so a name reused later never inherits an old key.
    r#"
ALTER TABLE tenants ADD COLUMN reseller TEXT;
CREATE INDEX tenants_by_reseller ON tenants (reseller);

CREATE TABLE api_keys (
    name       TEXT PRIMARY KEY NOT NULL,
    key_sha256 TEXT NOT NULL UNIQUE,
    realm      TEXT NOT NULL CHECK (realm IN ('admin', 'reseller', 'customer', 'account')),
    tenant     TEXT REFERENCES tenants (name) ON DELETE CASCADE,
    reseller   TEXT,
    sip_user   TEXT REFERENCES sip_users (username) ON DELETE CASCADE,
    created    TEXT NOT NULL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant);
CREATE INDEX api_keys_by_sip_user ON api_keys (sip_user);
"#,
    // 4: SIP users keep digest HA1 values (MD5 and SHA-256) and the realm they were computed
    // for, not the clear password. [`hash_sip_passwords`] fills them from the clear column,
    // then drops it. (DROP COLUMN keeps the table, so api_keys' references stay untouched.)
    r#"
ALTER TABLE sip_users ADD COLUMN ha1_md5 TEXT;
ALTER TABLE sip_users ADD COLUMN ha1_sha256 TEXT;
ALTER TABLE sip_users ADD COLUMN ha1_realm TEXT;
"#,
    // 5: a change counter for what the SIP layer keeps in memory (SIP users' HA1 values,
    // trunks' inbound addresses, numbers), bumped by triggers whoever writes, so a process
    // sees another's changes by reading one row. A trunk's delete cascades to its addresses,
    // whose triggers fire. SQLite has only row triggers: a bulk write bumps it many times,
    // which is harmless.
    r#"
CREATE TABLE directory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);
CREATE TRIGGER sip_users_insert_directory AFTER INSERT ON sip_users
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sip_users_update_directory AFTER UPDATE ON sip_users
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sip_users_delete_directory AFTER DELETE ON sip_users
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER trunk_inbound_addresses_insert_directory AFTER INSERT ON trunk_inbound_addresses
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER trunk_inbound_addresses_update_directory AFTER UPDATE ON trunk_inbound_addresses
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER trunk_inbound_addresses_delete_directory AFTER DELETE ON trunk_inbound_addresses
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER numbers_insert_directory AFTER INSERT ON numbers
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER numbers_update_directory AFTER UPDATE ON numbers
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER numbers_delete_directory AFTER DELETE ON numbers
    BEGIN UPDATE directory_version SET version = version + 1 WHERE id = 1; END;
"#,
    // 6: the lines (SIP users) a call involved, so that call history can be asked for by line
    // and an account key sees its own line's CDRs; and call history by number.
    r#"
CREATE TABLE cdr_lines (
    call_id TEXT NOT NULL REFERENCES cdrs (call_id) ON DELETE CASCADE,
    line    TEXT NOT NULL,
    PRIMARY KEY (call_id, line)
);
CREATE INDEX cdr_lines_by_line ON cdr_lines (line);
CREATE INDEX cdrs_by_number_start_time ON cdrs (number, start_time);
"#,
    // 7: recordings of calls, one row per finished file. No reference to `cdrs`: a recording
    // ends (and is written) before its call's CDR when it is stopped during the call.
    r#"
CREATE TABLE recordings (
    id          TEXT PRIMARY KEY NOT NULL,
    call_id     TEXT NOT NULL,
    tenant      TEXT,
    path        TEXT NOT NULL,
    channels    INTEGER NOT NULL CHECK (channels IN (1, 2)),
    start_time  TEXT NOT NULL,
    end_time    TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL
);
CREATE INDEX recordings_by_call ON recordings (call_id);
"#,
    // 8: a request rate per API key (NULL: the server's default, 0: none), settable through
    // the API as well as the config file.
    r#"
ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER CHECK (rate_limit IS NULL OR rate_limit >= 0);
"#,
    // 9: SIP users whose phones click-to-dial asks to answer by themselves.
    r#"
ALTER TABLE sip_users ADD COLUMN auto_answer INTEGER NOT NULL DEFAULT 0 CHECK (auto_answer IN (0, 1));
"#,
    // 10: TENIOS makecall requests: their ids go on counting across restarts, and a request's
    // call is found again (its state then comes from the call's CDR).
    r#"
CREATE TABLE makecalls (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL UNIQUE,
    tenant  TEXT NOT NULL,
    created TEXT NOT NULL
);
"#,
    // 11: the answers of requests made with an idempotency key (hashes of who asked and of
    // the request, not the request itself), so a retry after a restart is not run twice.
    r#"
CREATE TABLE idempotent_answers (
    id           BLOB PRIMARY KEY NOT NULL,
    request      BLOB NOT NULL,
    status       INTEGER NOT NULL,
    content_type TEXT,
    location     TEXT,
    body         BLOB NOT NULL,
    stored       TEXT NOT NULL
);
CREATE INDEX idempotent_answers_by_time ON idempotent_answers (stored);
"#,
];

/// Steps written in Rust that run after a version's SQL, in the same transaction.
type RustStep = fn(&Connection, &str) -> rusqlite::Result<()>;

/// `(version, step)`: what SQL alone cannot do (hashing).
const RUST_STEPS: &[(i64, RustStep)] = &[(4, hash_sip_passwords)];

/// Migration 4: HA1 of every clear password for `realm`, then the clear column goes.
fn hash_sip_passwords(tx: &Connection, realm: &str) -> rusqlite::Result<()> {
    let users: Vec<(String, String)> = tx
        .prepare("SELECT username, password FROM sip_users")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut update = tx.prepare(
        "UPDATE sip_users SET ha1_md5 = ?2, ha1_sha256 = ?3, ha1_realm = ?4 WHERE username = ?1",
    )?;
    for (username, password) in &users {
        let (md5, sha256) = crate::store::ha1_pair(username, realm, password);
        update.execute([username, &md5, &sha256, realm])?;
    }
    drop(update);
    tx.execute_batch("ALTER TABLE sip_users DROP COLUMN password")?;
    if !users.is_empty() {
        tracing::info!(
            count = users.len(),
            realm,
            "SIP passwords replaced by their digest HA1 values"
        );
    }
    Ok(())
}

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version`.
pub fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Applies the migrations after the current version up to `target`, each in its own
/// transaction together with the version bump, so a failure leaves a consistent older schema.
/// `realm` is the SIP digest realm, for migrations that compute HA1 values.
pub fn migrate_to(conn: &mut Connection, target: i64, realm: &str) -> Result<(), StoreError> {
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version > target {
            break;
        }
        // IMMEDIATE takes the write lock first, so two processes opening a fresh file at once
        // serialize here and the loser re-reads the version instead of applying it twice.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| StoreError::Migration { version, source })?;
        let now: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| StoreError::Migration { version, source })?;
        if now >= version {
            continue;
        }
        let step = RUST_STEPS
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, f)| f);
        tx.execute_batch(sql)
            .and_then(|()| step.map_or(Ok(()), |f| f(&tx, realm)))
            .and_then(|()| tx.pragma_update(None, "user_version", version))
            .and_then(|()| tx.commit())
            .map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection, realm: &str) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION, realm)
}
