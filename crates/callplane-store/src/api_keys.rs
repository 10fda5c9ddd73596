//! API keys: name, realm and scope, with only the SHA-256 (hex) of the secret stored. Hashing
//! and generating secrets is the API's business; the store keeps and finds rows.

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::StoreError;
use crate::model::{ApiKey, ApiRealm, FieldError, Validate};
use crate::sql::{time_text, SqlTime};
use crate::Store;

const API_KEY_COLS: &str = "name, realm, tenant, reseller, sip_user, created, rate_limit";

fn api_key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let realm: String = row.get(1)?;
    let realm = ApiRealm::parse(&realm).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("unknown realm {realm:?}").into(),
        )
    })?;
    let SqlTime(created) = row.get(5)?;
    Ok(ApiKey {
        name: row.get(0)?,
        realm,
        tenant: row.get(2)?,
        reseller: row.get(3)?,
        sip_user: row.get(4)?,
        rate_limit: row.get(6)?,
        created: Some(created),
    })
}

/// 64 lowercase hex digits: what SHA-256 in hex looks like.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check(key: &ApiKey, key_sha256: &str) -> Result<(), StoreError> {
    let mut errors = key.validate();
    if !is_sha256_hex(key_sha256) {
        errors.push(FieldError {
            object: key.label(),
            field: "keySha256".into(),
            message: "must be 64 lowercase hex digits".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(errors))
    }
}

fn load(conn: &Connection, name: &str) -> Result<Option<ApiKey>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE name = ?1"
        ))?
        .query_row([name], api_key_from_row)
        .optional()?;
    Ok(found)
}

impl Store {
    /// Stores a new key; [`StoreError::Exists`] when the name is taken. Returns the row as
    /// stored (with `created`). The tenant and SIP user must exist (database references).
    pub fn create_api_key(&self, key: &ApiKey, key_sha256: &str) -> Result<ApiKey, StoreError> {
        self.write_api_key(key, key_sha256, false)
    }

    /// Inserts or replaces (by name) a key, keeping the original `created` time; used for
    /// keys declared in the config file, applied at every start.
    pub fn upsert_api_key(&self, key: &ApiKey, key_sha256: &str) -> Result<ApiKey, StoreError> {
        self.write_api_key(key, key_sha256, true)
    }

    fn write_api_key(
        &self,
        key: &ApiKey,
        key_sha256: &str,
        replace: bool,
    ) -> Result<ApiKey, StoreError> {
        check(key, key_sha256)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !replace && load(&tx, &key.name)?.is_some() {
            return Err(StoreError::Exists {
                object: key.label(),
            });
        }
        let on_conflict = if replace {
            " ON CONFLICT (name) DO UPDATE SET key_sha256 = excluded.key_sha256, \
             realm = excluded.realm, tenant = excluded.tenant, reseller = excluded.reseller, \
             sip_user = excluded.sip_user, rate_limit = excluded.rate_limit"
        } else {
            ""
        };
        tx.prepare_cached(&format!(
            "INSERT INTO api_keys (key_sha256, {API_KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8){on_conflict}"
        ))?
        .execute(params![
            key_sha256,
            key.name,
            key.realm.as_str(),
            key.tenant,
            key.reseller,
            key.sip_user,
            time_text(&Utc::now()),
            key.rate_limit
        ])?;
        let stored = load(&tx, &key.name)?;
        tx.commit()?;
        stored.ok_or_else(|| StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The key whose secret hashes to `key_sha256`: how a request is authenticated.
    pub fn find_api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>, StoreError> {
        let conn = self.read();
        let found = conn
            .prepare_cached(&format!(
                "SELECT {API_KEY_COLS} FROM api_keys WHERE key_sha256 = ?1"
            ))?
            .query_row([key_sha256], api_key_from_row)
            .optional()?;
        Ok(found)
    }

    pub fn get_api_key(&self, name: &str) -> Result<Option<ApiKey>, StoreError> {
        load(&self.read(), name)
    }

    /// All keys, by name.
    pub fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys ORDER BY name"
        ))?;
        let rows = stmt.query_map([], api_key_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a key; false when absent. The last key of realm `admin` is refused
    /// ([`StoreError::Refused`]): without it nobody could manage admin-only objects. Checked
    /// in the write transaction, so two admins deleting each other cannot both succeed.
    pub fn delete_api_key(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(key) = load(&tx, name)? else {
            return Ok(false);
        };
        if key.realm == ApiRealm::Admin {
            let admins: i64 = tx
                .prepare_cached("SELECT count(*) FROM api_keys WHERE realm = 'admin'")?
                .query_row([], |row| row.get(0))?;
            if admins <= 1 {
                return Err(StoreError::Refused(format!(
                    "API key \"{name}\" is the last key of realm admin; create another admin \
                     key before deleting it"
                )));
            }
        }
        let n = tx
            .prepare_cached("DELETE FROM api_keys WHERE name = ?1")?
            .execute([name])?;
        tx.commit()?;
        Ok(n > 0)
    }
}
