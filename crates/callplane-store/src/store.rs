//! The SQLite store: opening and migrating the database file, syncing provisioned objects
//! into it, and the lookups the SIP and engine crates make per call. CDRs are in `cdr.rs`.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use md5::Md5;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::directory::DirectoryCell;
use crate::error::StoreError;
use crate::migrations;
use crate::model::{
    canonical_ip, Announcement, Number, Provisioning, RoutingPlan, SipUser, Tenant, Trunk,
};
use crate::private_fs;
use crate::sql::SqlJson;

/// How long a statement waits for another process's write lock before failing with BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The realm [`Store::open_in_memory`] computes HA1 values for (the config's default).
pub const DEFAULT_REALM: &str = "callplane";

/// `(HA1 MD5, HA1 SHA-256)` in lowercase hex of `username:realm:password` (RFC 7616 §3.4.2).
pub(crate) fn ha1_pair(username: &str, realm: &str, password: &str) -> (String, String) {
    let input = format!("{username}:{realm}:{password}");
    (
        hex(&Md5::digest(input.as_bytes())),
        hex(&Sha256::digest(input.as_bytes())),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the registrar checks a SIP user's digest response against: never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SipCredentials {
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// The realm the HA1 values were computed for; they only verify in that realm.
    pub realm: String,
}

impl std::fmt::Debug for SipCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipCredentials")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// Handle to the database. Cheap to clone. Clones share one connection for writes (and the
/// multi-statement reads of the API), a pool of read connections for the point look-ups of
/// calls and requests, and the in-memory [`SipDirectoryView`](crate::SipDirectoryView).
/// [`Store::own_connection`] gives a clone with a write connection of its own (the CDR
/// writer's), so a slow CDR commit never holds up request handling and the reverse.
#[derive(Debug, Clone)]
pub struct Store {
    // SQLite serializes writers anyway; the mutex only orders this connection's users.
    conn: Arc<Mutex<Connection>>,
    /// `None` for an in-memory database (a private one cannot be opened twice): reads then
    /// use `conn`.
    readers: Option<Arc<ReaderPool>>,
    /// The SIP digest realm that new passwords are hashed for.
    realm: Arc<str>,
    directory: Arc<DirectoryCell>,
}

/// Read connections to the database file, opened on demand and kept for reuse. In WAL mode
/// a reader never waits for a writer, in this process or another.
#[derive(Debug)]
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Read connections kept open when idle; more are opened under load and closed after use.
const IDLE_READERS: usize = 8;

/// A read connection, returned to its pool on drop.
pub(crate) enum ReadConn<'a> {
    Pooled {
        pool: &'a ReaderPool,
        conn: Option<Connection>,
    },
    Shared(MutexGuard<'a, Connection>),
}

impl Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            // `conn` is only taken in drop.
            ReadConn::Pooled { conn, .. } => conn.as_ref().expect("read connection present"),
            ReadConn::Shared(g) => g,
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match self {
            ReadConn::Pooled { conn, .. } => conn.as_mut().expect("read connection present"),
            ReadConn::Shared(g) => g,
        }
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let ReadConn::Pooled { pool, conn } = self {
            if let Some(c) = conn.take() {
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < IDLE_READERS && c.is_autocommit() {
                    idle.push(c);
                }
            }
        }
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed, mode 0600) the database file at `path` and migrates it to
    /// the current schema. `realm` is the SIP digest realm: SIP passwords are kept as HA1
    /// values for it, and users whose HA1 was computed for another realm are named in a
    /// warning (they cannot authenticate until their password is set again).
    pub fn open(path: &Path, realm: &str) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let files_err = |source| StoreError::Files {
            path: path.to_path_buf(),
            source,
        };
        private_fs::prepare_db_file(path).map_err(files_err)?;
        let mut conn = open_connection(path).map_err(open_err)?;
        // WAL lets readers (calls, the API, a CLI) run while a writer writes. The default
        // synchronous=FULL is kept: a committed CDR must survive a power cut.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
        }
        migrations::migrate(&mut conn, realm)?;
        // SQLite made the -wal and -shm files now; they get the database's mode, but an
        // older installation may have left them more open.
        private_fs::restrict_db_files(path).map_err(files_err)?;
        let mut store = Store::from_connection(conn, realm);
        store.readers = Some(Arc::new(ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }));
        store.warn_other_realm()?;
        store.reload_directory()?;
        Ok(store)
    }

    /// A private in-memory database with the current schema and [`DEFAULT_REALM`], for tests
    /// of other crates.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        migrations::migrate(&mut conn, DEFAULT_REALM)?;
        let store = Store::from_connection(conn, DEFAULT_REALM);
        store.reload_directory()?;
        Ok(store)
    }

    fn from_connection(conn: Connection, realm: &str) -> Store {
        Store {
            conn: Arc::new(Mutex::new(conn)),
            readers: None,
            realm: realm.into(),
            directory: Arc::default(),
        }
    }

    /// A clone with a write connection of its own (sharing the read pool and the directory),
    /// so that its writes and this store's never queue behind each other in this process.
    /// An in-memory store has only one connection and returns a plain clone.
    pub fn own_connection(&self) -> Result<Store, StoreError> {
        let Some(pool) = &self.readers else {
            return Ok(self.clone());
        };
        let conn = open_connection(&pool.path).map_err(|source| StoreError::Open {
            path: pool.path.clone(),
            source,
        })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            ..self.clone()
        })
    }

    pub(crate) fn directory_cell(&self) -> &DirectoryCell {
        &self.directory
    }

    /// The SIP digest realm new passwords are hashed for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// SIP users whose HA1 values were computed for another realm than the store's.
    pub fn sip_users_of_other_realm(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT username FROM sip_users WHERE ha1_realm IS NOT ?1 ORDER BY username",
        )?;
        let rows = stmt.query_map([&*self.realm], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// HA1 values verify only in the realm they were computed for: when the configured realm
    /// changed, say which users need their password set again.
    fn warn_other_realm(&self) -> Result<(), StoreError> {
        let users = self.sip_users_of_other_realm()?;
        if !users.is_empty() {
            tracing::warn!(
                realm = %self.realm,
                count = users.len(),
                users = %users.join(", "),
                "these SIP users' digest HA1 values were computed for another realm: they \
                 cannot authenticate until their password is set again"
            );
        }
        Ok(())
    }

    /// The digest credentials of a SIP user, for the registrar and INVITE authentication.
    pub fn sip_user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<SipCredentials>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT ha1_md5, ha1_sha256, ha1_realm FROM sip_users WHERE username = ?1 \
             AND ha1_md5 IS NOT NULL AND ha1_sha256 IS NOT NULL AND ha1_realm IS NOT NULL",
        )?;
        Ok(stmt
            .query_row([username], |row| {
                Ok(SipCredentials {
                    ha1_md5: row.get(0)?,
                    ha1_sha256: row.get(1)?,
                    realm: row.get(2)?,
                })
            })
            .optional()?)
    }

    /// The schema version of the open database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        migrations::current_version(&self.read())
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done write behind: every write
        // is in a transaction that rolls back on drop. So a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for reads: from the pool (opened if none is idle), or the shared one for
    /// an in-memory database or when a new connection cannot be opened.
    pub(crate) fn read(&self) -> ReadConn<'_> {
        let Some(pool) = &self.readers else {
            return ReadConn::Shared(self.conn());
        };
        let idle = pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => match open_connection(&pool.path) {
                Ok(c) => {
                    // A reader that cannot write by mistake.
                    if let Err(e) = c.pragma_update(None, "query_only", true) {
                        tracing::debug!(error = %e, "cannot make a read connection query-only");
                    }
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a read connection; using the shared one");
                    return ReadConn::Shared(self.conn());
                }
            },
        };
        ReadConn::Pooled {
            pool,
            conn: Some(conn),
        }
    }

    /// Inserts or updates (by natural key) every object of `p` in one transaction. Each
    /// object's fields are validated first; references are enforced by the database (run
    /// [`Provisioning::validate`] beforehand for readable errors about them). Objects in the
    /// database but absent from `p` are left alone.
    pub fn apply_provisioning(&self, p: &Provisioning) -> Result<(), StoreError> {
        self.write_provisioning(p, |_| Ok(()))
    }

    /// Validates `p`'s fields, then in one write transaction runs `precheck` and upserts
    /// every object of `p`.
    pub(crate) fn write_provisioning(
        &self,
        p: &Provisioning,
        precheck: impl FnOnce(&Connection) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let errors = p.validate_fields();
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        precheck(&tx)?;
        // Owners before the objects that reference them; the tenant -> default trunk
        // reference is deferred to commit.
        for t in &p.tenants {
            upsert_tenant(&tx, t)?;
        }
        for t in &p.trunks {
            upsert_trunk(&tx, t)?;
        }
        for r in &p.routing_plans {
            upsert_routing_plan(&tx, r)?;
        }
        for a in &p.announcements {
            upsert_announcement(&tx, a)?;
        }
        for u in &p.sip_users {
            upsert_sip_user(&tx, u, &self.realm)?;
        }
        for n in &p.numbers {
            upsert_number(&tx, n)?;
        }
        tx.commit()?;
        drop(conn);
        if !(p.sip_users.is_empty() && p.trunks.is_empty() && p.numbers.is_empty()) {
            self.directory_changed();
        }
        Ok(())
    }

    /// Everything provisioned, as one consistent snapshot (e.g. to export a config file).
    pub fn export_provisioning(&self) -> Result<Provisioning, StoreError> {
        let mut conn = self.read();
        // A read transaction so that all lists come from the same snapshot.
        let tx = conn.transaction()?;
        let p = Provisioning {
            tenants: list_tenants(&tx)?,
            numbers: list_numbers(&tx)?,
            sip_users: list_sip_users(&tx)?,
            trunks: list_trunks(&tx)?,
            routing_plans: list_routing_plans(&tx)?,
            announcements: list_announcements(&tx)?,
        };
        tx.commit()?;
        Ok(p)
    }

    /// The number (DNIS) and its tenant, for routing an inbound call.
    pub fn find_number(&self, number: &str) -> Result<Option<(Number, Tenant)>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {NUMBER_COLS}, {TENANT_COLS_T} FROM numbers n \
             JOIN tenants t ON t.name = n.tenant WHERE n.number = ?1"
        ))?;
        let found = stmt
            .query_row([number], |row| {
                Ok((number_from_row(row, 0)?, tenant_from_row(row, 4)?))
            })
            .optional()?;
        Ok(found)
    }

    pub fn get_tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TENANT_COLS} FROM tenants WHERE name = ?1"
        ))?;
        Ok(stmt
            .query_row([name], |row| tenant_from_row(row, 0))
            .optional()?)
    }

    pub fn get_routing_plan(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<RoutingPlan>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {PLAN_COLS} FROM routing_plans WHERE tenant = ?1 AND name = ?2"
        ))?;
        Ok(stmt.query_row([tenant, name], plan_from_row).optional()?)
    }

    /// A SIP user by username; usernames are global because REGISTER carries no tenant.
    pub fn get_sip_user(&self, username: &str) -> Result<Option<SipUser>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SIP_USER_COLS} FROM sip_users WHERE username = ?1"
        ))?;
        Ok(stmt.query_row([username], sip_user_from_row).optional()?)
    }

    pub fn get_trunk(&self, tenant: &str, name: &str) -> Result<Option<Trunk>, StoreError> {
        load_trunk(&self.read(), tenant, name)
    }

    /// The trunk that lists `ip` among its inbound addresses. `ip` may be IPv4, IPv6 or
    /// IPv4-mapped IPv6; anything that is not an IP address matches nothing.
    pub fn find_trunk_by_source_ip(&self, ip: &str) -> Result<Option<Trunk>, StoreError> {
        let Some(ip) = canonical_ip(ip) else {
            return Ok(None);
        };
        let conn = self.read();
        // Validation keeps addresses unique per provisioning set; if the database still holds
        // a duplicate, the ORDER BY makes the choice at least deterministic.
        let key = conn
            .prepare_cached(
                "SELECT tenant, trunk FROM trunk_inbound_addresses WHERE address = ?1 \
                 ORDER BY tenant, trunk LIMIT 1",
            )?
            .query_row([&ip], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        match key {
            Some((tenant, name)) => load_trunk(&conn, &tenant, &name),
            None => Ok(None),
        }
    }

    pub fn get_announcement(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Announcement>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ANNOUNCEMENT_COLS} FROM announcements WHERE tenant = ?1 AND name = ?2"
        ))?;
        Ok(stmt
            .query_row([tenant, name], announcement_from_row)
            .optional()?)
    }

    /// All tenants, by name.
    pub fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        list_tenants(&self.read())
    }

    /// All numbers, by number.
    pub fn list_numbers(&self) -> Result<Vec<Number>, StoreError> {
        list_numbers(&self.read())
    }

    /// All SIP users, by username.
    pub fn list_sip_users(&self) -> Result<Vec<SipUser>, StoreError> {
        list_sip_users(&self.read())
    }

    /// All trunks, by tenant and name.
    pub fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError> {
        list_trunks(&self.read())
    }

    /// All routing plans, by tenant and name.
    pub fn list_routing_plans(&self) -> Result<Vec<RoutingPlan>, StoreError> {
        list_routing_plans(&self.read())
    }

    /// All announcements, by tenant and name.
    pub fn list_announcements(&self) -> Result<Vec<Announcement>, StoreError> {
        list_announcements(&self.read())
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Off by default in SQLite, per connection; the schema relies on it for references.
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

pub(crate) const TENANT_COLS: &str =
    "name, customer_number, signing_secret, default_trunk, callstate_info_url, reseller";
const TENANT_COLS_T: &str = "t.name, t.customer_number, t.signing_secret, t.default_trunk, \
     t.callstate_info_url, t.reseller";
pub(crate) const NUMBER_COLS: &str = "n.number, n.tenant, n.routing_plan, n.callstate_info_url";
pub(crate) const SIP_USER_COLS: &str =
    "tenant, username, display_name, ha1_md5 IS NOT NULL AND ha1_sha256 IS NOT NULL, auto_answer";
pub(crate) const TRUNK_COLS: &str =
    "tenant, name, host, port, transport, username, password, caller_id";
pub(crate) const PLAN_COLS: &str = "tenant, name, blocks, callstate_info_url";
pub(crate) const ANNOUNCEMENT_COLS: &str = "tenant, name, file";

pub(crate) fn tenant_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        name: row.get(at)?,
        customer_number: row.get(at + 1)?,
        signing_secret: row.get(at + 2)?,
        default_trunk: row.get(at + 3)?,
        callstate_info_url: row.get(at + 4)?,
        reseller: row.get(at + 5)?,
    })
}

pub(crate) fn number_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Number> {
    Ok(Number {
        number: row.get(at)?,
        tenant: row.get(at + 1)?,
        routing_plan: row.get(at + 2)?,
        callstate_info_url: row.get(at + 3)?,
    })
}

pub(crate) fn sip_user_from_row(row: &Row<'_>) -> rusqlite::Result<SipUser> {
    Ok(SipUser {
        tenant: row.get(0)?,
        username: row.get(1)?,
        // Write-only: the store has only the HA1 values.
        password: None,
        display_name: row.get(2)?,
        password_set: row.get(3)?,
        auto_answer: row.get(4)?,
    })
}

/// A trunk row without its inbound addresses (filled in by [`with_addresses`]).
pub(crate) fn trunk_from_row(row: &Row<'_>) -> rusqlite::Result<Trunk> {
    Ok(Trunk {
        tenant: row.get(0)?,
        name: row.get(1)?,
        host: row.get(2)?,
        port: row.get(3)?,
        transport: row.get(4)?,
        username: row.get(5)?,
        password: row.get(6)?,
        caller_id: row.get(7)?,
        inbound_addresses: Vec::new(),
    })
}

pub(crate) fn plan_from_row(row: &Row<'_>) -> rusqlite::Result<RoutingPlan> {
    let SqlJson(blocks) = row.get(2)?;
    Ok(RoutingPlan {
        tenant: row.get(0)?,
        name: row.get(1)?,
        blocks,
        callstate_info_url: row.get(3)?,
    })
}

pub(crate) fn announcement_from_row(row: &Row<'_>) -> rusqlite::Result<Announcement> {
    Ok(Announcement {
        tenant: row.get(0)?,
        name: row.get(1)?,
        file: row.get(2)?,
    })
}

pub(crate) fn with_addresses(conn: &Connection, mut trunk: Trunk) -> Result<Trunk, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT address FROM trunk_inbound_addresses WHERE tenant = ?1 AND trunk = ?2 \
         ORDER BY position",
    )?;
    trunk.inbound_addresses = stmt
        .query_map([&trunk.tenant, &trunk.name], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(trunk)
}

pub(crate) fn load_trunk(
    conn: &Connection,
    tenant: &str,
    name: &str,
) -> Result<Option<Trunk>, StoreError> {
    let trunk = conn
        .prepare_cached(&format!(
            "SELECT {TRUNK_COLS} FROM trunks WHERE tenant = ?1 AND name = ?2"
        ))?
        .query_row([tenant, name], trunk_from_row)
        .optional()?;
    trunk.map(|t| with_addresses(conn, t)).transpose()
}

fn list_tenants(conn: &Connection) -> Result<Vec<Tenant>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY name"))?;
    let rows = stmt.query_map([], |row| tenant_from_row(row, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn list_numbers(conn: &Connection) -> Result<Vec<Number>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {NUMBER_COLS} FROM numbers n ORDER BY n.number"
    ))?;
    let rows = stmt.query_map([], |row| number_from_row(row, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn list_sip_users(conn: &Connection) -> Result<Vec<SipUser>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SIP_USER_COLS} FROM sip_users ORDER BY username"
    ))?;
    let rows = stmt.query_map([], sip_user_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn list_trunks(conn: &Connection) -> Result<Vec<Trunk>, StoreError> {
    let trunks: Vec<Trunk> = conn
        .prepare_cached(&format!(
            "SELECT {TRUNK_COLS} FROM trunks ORDER BY tenant, name"
        ))?
        .query_map([], trunk_from_row)?
        .collect::<Result<_, _>>()?;
    trunks
        .into_iter()
        .map(|t| with_addresses(conn, t))
        .collect()
}

fn list_routing_plans(conn: &Connection) -> Result<Vec<RoutingPlan>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PLAN_COLS} FROM routing_plans ORDER BY tenant, name"
    ))?;
    let rows = stmt.query_map([], plan_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn list_announcements(conn: &Connection) -> Result<Vec<Announcement>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ANNOUNCEMENT_COLS} FROM announcements ORDER BY tenant, name"
    ))?;
    let rows = stmt.query_map([], announcement_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// Upserts use ON CONFLICT DO UPDATE rather than INSERT OR REPLACE: REPLACE deletes the old
// row first, which would break (or cascade through) the foreign keys pointing at it.

pub(crate) fn upsert_tenant(conn: &Connection, t: &Tenant) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO tenants (name, customer_number, signing_secret, default_trunk, \
         callstate_info_url, reseller) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (name) DO UPDATE SET customer_number = excluded.customer_number, \
         signing_secret = excluded.signing_secret, default_trunk = excluded.default_trunk, \
         callstate_info_url = excluded.callstate_info_url, reseller = excluded.reseller",
    )?
    .execute(params![
        t.name,
        t.customer_number,
        t.signing_secret,
        t.default_trunk,
        t.callstate_info_url,
        t.reseller
    ])?;
    Ok(())
}

pub(crate) fn upsert_trunk(conn: &Connection, t: &Trunk) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO trunks (tenant, name, host, port, transport, username, password, caller_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (tenant, name) DO UPDATE SET host = excluded.host, port = excluded.port, \
         transport = excluded.transport, username = excluded.username, \
         password = excluded.password, caller_id = excluded.caller_id",
    )?
    .execute(params![
        t.tenant,
        t.name,
        t.host,
        t.port,
        t.transport,
        t.username,
        t.password,
        t.caller_id
    ])?;
    conn.prepare_cached("DELETE FROM trunk_inbound_addresses WHERE tenant = ?1 AND trunk = ?2")?
        .execute([&t.tenant, &t.name])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO trunk_inbound_addresses (tenant, trunk, position, address) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (position, address) in t.inbound_addresses.iter().enumerate() {
        // Stored canonical so the per-INVITE lookup is an exact index match; validation
        // has already rejected anything that is not an IP address.
        let address = canonical_ip(address).unwrap_or_else(|| address.clone());
        insert.execute(params![t.tenant, t.name, position as i64, address])?;
    }
    Ok(())
}

pub(crate) fn upsert_routing_plan(conn: &Connection, r: &RoutingPlan) -> Result<(), StoreError> {
    let blocks = serde_json::Value::Array(r.blocks.clone()).to_string();
    conn.prepare_cached(
        "INSERT INTO routing_plans (tenant, name, blocks, callstate_info_url) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (tenant, name) DO UPDATE SET blocks = excluded.blocks, \
         callstate_info_url = excluded.callstate_info_url",
    )?
    .execute(params![r.tenant, r.name, blocks, r.callstate_info_url])?;
    Ok(())
}

pub(crate) fn upsert_announcement(conn: &Connection, a: &Announcement) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO announcements (tenant, name, file) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant, name) DO UPDATE SET file = excluded.file",
    )?
    .execute(params![a.tenant, a.name, a.file])?;
    Ok(())
}

/// With a password, stores its HA1 values for `realm`; without one, keeps the stored HA1
/// values (a new user without a password is refused).
pub(crate) fn upsert_sip_user(
    conn: &Connection,
    u: &SipUser,
    realm: &str,
) -> Result<(), StoreError> {
    let Some(password) = &u.password else {
        let n = conn
            .prepare_cached(
                "UPDATE sip_users SET tenant = ?2, display_name = ?3, auto_answer = ?4 \
                 WHERE username = ?1",
            )?
            .execute(params![u.username, u.tenant, u.display_name, u.auto_answer])?;
        if n == 0 {
            use crate::model::Validate;
            return Err(StoreError::Invalid(vec![crate::FieldError {
                object: u.label(),
                field: "password".into(),
                message: "is required for a new SIP user".into(),
            }]));
        }
        return Ok(());
    };
    let (md5, sha256) = ha1_pair(&u.username, realm, password);
    conn.prepare_cached(
        "INSERT INTO sip_users (username, tenant, display_name, ha1_md5, ha1_sha256, ha1_realm, \
         auto_answer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (username) DO UPDATE SET tenant = excluded.tenant, \
         display_name = excluded.display_name, ha1_md5 = excluded.ha1_md5, \
         ha1_sha256 = excluded.ha1_sha256, ha1_realm = excluded.ha1_realm, \
         auto_answer = excluded.auto_answer",
    )?
    .execute(params![
        u.username,
        u.tenant,
        u.display_name,
        md5,
        sha256,
        realm,
        u.auto_answer
    ])?;
    Ok(())
}

pub(crate) fn upsert_number(conn: &Connection, n: &Number) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO numbers (number, tenant, routing_plan, callstate_info_url) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (number) DO UPDATE SET tenant = excluded.tenant, \
         routing_plan = excluded.routing_plan, callstate_info_url = excluded.callstate_info_url",
    )?
    .execute(params![
        n.number,
        n.tenant,
        n.routing_plan,
        n.callstate_info_url
    ])?;
    Ok(())
}
