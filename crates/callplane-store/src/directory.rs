//! The SIP directory: what the SIP dispatch loop asks about on every INVITE and REGISTER
//! (a SIP user's digest HA1, whether a source address is a trunk, whether a number exists),
//! held in memory so that no request waits on SQLite. A slow commit, a CDR batch or another
//! process holding the database's write lock cannot stall SIP.
//!
//! The snapshot is rebuilt off the SIP path: right after every write made through this
//! process's [`Store`] (so an API write is seen by the next REGISTER), and by
//! [`Store::watch_directory`] when the `directory_version` row — bumped by triggers on every
//! change of SIP users, trunks, trunk addresses and numbers, whoever made it — has moved (a
//! CLI or another process writing the file).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::StoreError;
use crate::store::{SipCredentials, Store};

/// One consistent view of the directory, read in one transaction.
#[derive(Debug, Default)]
pub struct SipDirectoryView {
    users: HashMap<String, SipCredentials>,
    trunk_addresses: HashSet<IpAddr>,
    numbers: HashSet<String>,
    /// The `directory_version` this view was read at.
    version: i64,
}

impl SipDirectoryView {
    /// A SIP user's digest credentials (users without HA1 values are absent).
    pub fn credentials(&self, username: &str) -> Option<&SipCredentials> {
        self.users.get(username)
    }

    /// Whether `ip` is an inbound address of some trunk. IPv4-mapped IPv6 addresses match
    /// their IPv4 form, as in [`Store::find_trunk_by_source_ip`].
    pub fn is_trunk_address(&self, ip: IpAddr) -> bool {
        self.trunk_addresses.contains(&canonical(ip))
    }

    /// Whether the number is provisioned.
    pub fn has_number(&self, number: &str) -> bool {
        self.numbers.contains(number)
    }

    /// The `directory_version` this view was read at.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// SIP users, trunk addresses and numbers in this view.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.users.len(),
            self.trunk_addresses.len(),
            self.numbers.len(),
        )
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The current view, shared by all clones of a [`Store`].
#[derive(Debug, Default)]
pub(crate) struct DirectoryCell {
    current: RwLock<Arc<SipDirectoryView>>,
    /// Serialises rebuilds, so an older read never replaces a newer one.
    rebuild: std::sync::Mutex<()>,
}

impl DirectoryCell {
    pub(crate) fn get(&self) -> Arc<SipDirectoryView> {
        // The guarded value is an Arc swapped whole: a panicking holder cannot leave it torn.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, view: SipDirectoryView) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }
}

/// The `directory_version` row.
fn read_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT version FROM directory_version WHERE id = 1")?
        .query_row([], |row| row.get(0))
}

/// Reads the whole directory in one read transaction.
pub(crate) fn load(conn: &mut Connection) -> Result<SipDirectoryView, StoreError> {
    let tx = conn.transaction()?;
    let version = read_version(&tx)?;
    let mut users = HashMap::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT username, ha1_md5, ha1_sha256, ha1_realm FROM sip_users \
             WHERE ha1_md5 IS NOT NULL AND ha1_sha256 IS NOT NULL AND ha1_realm IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                SipCredentials {
                    ha1_md5: row.get(1)?,
                    ha1_sha256: row.get(2)?,
                    realm: row.get(3)?,
                },
            ))
        })?;
        for r in rows {
            let (name, c) = r?;
            users.insert(name, c);
        }
    }
    let mut trunk_addresses = HashSet::new();
    {
        let mut stmt = tx.prepare_cached("SELECT address FROM trunk_inbound_addresses")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        for r in rows {
            // Stored canonical; anything else cannot match a source address anyway.
            if let Ok(ip) = r?.parse::<IpAddr>() {
                trunk_addresses.insert(canonical(ip));
            }
        }
    }
    let mut numbers = HashSet::new();
    {
        let mut stmt = tx.prepare_cached("SELECT number FROM numbers")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        for r in rows {
            numbers.insert(r?);
        }
    }
    tx.commit()?;
    Ok(SipDirectoryView {
        users,
        trunk_addresses,
        numbers,
        version,
    })
}

/// How often [`Store::watch_directory`] checks for changes made by other processes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

impl Store {
    /// The SIP directory as last loaded: never touches the database.
    pub fn sip_directory(&self) -> Arc<SipDirectoryView> {
        self.directory_cell().get()
    }

    /// Re-reads the directory from the database now. Called after this process's own writes;
    /// a failure keeps the previous view (and is logged).
    pub fn reload_directory(&self) -> Result<(), StoreError> {
        let cell = self.directory_cell();
        let _one = cell.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        let view = {
            let mut conn = self.read();
            load(&mut conn)?
        };
        cell.set(view);
        Ok(())
    }

    /// After a write that may have changed the directory: reload, logging a failure (the
    /// write itself has committed; the watcher retries).
    pub(crate) fn directory_changed(&self) {
        if let Err(e) = self.reload_directory() {
            tracing::warn!(error = %e, "cannot reload the SIP directory; keeping the previous one");
        }
    }

    /// The `directory_version` in the database now.
    fn directory_version(&self) -> Result<i64, StoreError> {
        Ok(read_version(&self.read())?)
    }

    /// Starts a thread that reloads the directory when another process changed it, checking
    /// every `interval`. A database that cannot be read (locked in exclusive mode, a disk
    /// error) is logged once and retried; the view in memory stays in use meanwhile.
    pub fn watch_directory(&self, interval: Duration) -> std::io::Result<thread::JoinHandle<()>> {
        let store = self.clone();
        thread::Builder::new()
            .name("sip-directory".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    thread::sleep(interval);
                    let loaded = store.sip_directory().version();
                    let result = match store.directory_version() {
                        Ok(v) if v == loaded => Ok(()),
                        Ok(_) => store.reload_directory(),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) if failing => {
                            tracing::info!("SIP directory readable again");
                            failing = false;
                        }
                        Ok(()) => {}
                        Err(e) if !failing => {
                            tracing::warn!(error = %e, "cannot check the SIP directory for changes; using the one in memory");
                            failing = true;
                        }
                        Err(_) => {}
                    }
                }
            })
    }
}
