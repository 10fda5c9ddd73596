//! Single-object operations for the provisioning API: create (refusing an existing key),
//! per-tenant and per-reseller lists, the reference counts that block a delete, and deletes.
//! Upserts reuse [`Store::apply_provisioning`] with a one-object set.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::StoreError;
use crate::model::{
    Announcement, Number, Provisioning, RoutingPlan, SipUser, Tenant, Trunk, Validate,
};
use crate::store::{
    announcement_from_row, number_from_row, plan_from_row, sip_user_from_row, tenant_from_row,
    trunk_from_row, with_addresses, ANNOUNCEMENT_COLS, NUMBER_COLS, PLAN_COLS, SIP_USER_COLS,
    TENANT_COLS, TRUNK_COLS,
};
use crate::Store;

/// How many objects of each kind a tenant still owns (a tenant is deleted only when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub numbers: usize,
    pub sip_users: usize,
    pub trunks: usize,
    pub routing_plans: usize,
    pub announcements: usize,
}

impl TenantUsage {
    pub fn is_empty(&self) -> bool {
        *self == TenantUsage::default()
    }

    /// `2 numbers, 1 routing plan`: the non-zero counts, for an error message.
    pub fn describe(&self) -> String {
        let parts = [
            (self.numbers, "number", "numbers"),
            (self.sip_users, "SIP user", "SIP users"),
            (self.trunks, "trunk", "trunks"),
            (self.routing_plans, "routing plan", "routing plans"),
            (self.announcements, "announcement", "announcements"),
        ];
        parts
            .iter()
            .filter(|(n, _, _)| *n > 0)
            .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn exists(conn: &Connection, sql: &str, key: &[&str]) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(rusqlite::params_from_iter(key), |_| Ok(()))
        .optional()?
        .is_some())
}

fn refuse_existing(conn: &Connection, p: &Provisioning) -> Result<(), StoreError> {
    let taken = |object: String| Err(StoreError::Exists { object });
    for t in &p.tenants {
        if exists(conn, "SELECT 1 FROM tenants WHERE name = ?1", &[&t.name])? {
            return taken(t.label());
        }
    }
    for n in &p.numbers {
        if exists(
            conn,
            "SELECT 1 FROM numbers WHERE number = ?1",
            &[&n.number],
        )? {
            return taken(n.label());
        }
    }
    for u in &p.sip_users {
        let sql = "SELECT 1 FROM sip_users WHERE username = ?1";
        if exists(conn, sql, &[&u.username])? {
            return taken(u.label());
        }
    }
    for t in &p.trunks {
        let sql = "SELECT 1 FROM trunks WHERE tenant = ?1 AND name = ?2";
        if exists(conn, sql, &[&t.tenant, &t.name])? {
            return taken(t.label());
        }
    }
    for r in &p.routing_plans {
        let sql = "SELECT 1 FROM routing_plans WHERE tenant = ?1 AND name = ?2";
        if exists(conn, sql, &[&r.tenant, &r.name])? {
            return taken(r.label());
        }
    }
    for a in &p.announcements {
        let sql = "SELECT 1 FROM announcements WHERE tenant = ?1 AND name = ?2";
        if exists(conn, sql, &[&a.tenant, &a.name])? {
            return taken(a.label());
        }
    }
    Ok(())
}

impl Store {
    /// Inserts every object of `p` in one transaction, failing with [`StoreError::Exists`]
    /// (and writing nothing) when any of them is already stored under its natural key.
    pub fn create_provisioning(&self, p: &Provisioning) -> Result<(), StoreError> {
        // Checked inside the write transaction, so two racing creates cannot both succeed.
        self.write_provisioning(p, |tx| refuse_existing(tx, p))
    }

    /// A number without its tenant (see [`Store::find_number`] for call routing).
    pub fn get_number(&self, number: &str) -> Result<Option<Number>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {NUMBER_COLS} FROM numbers n WHERE n.number = ?1"
        ))?;
        Ok(stmt
            .query_row([number], |row| number_from_row(row, 0))
            .optional()?)
    }

    /// The tenant that uses this `customerNumber`, if any.
    pub fn find_tenant_by_customer_number(
        &self,
        customer_number: i64,
    ) -> Result<Option<Tenant>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TENANT_COLS} FROM tenants WHERE customer_number = ?1"
        ))?;
        Ok(stmt
            .query_row([customer_number], |row| tenant_from_row(row, 0))
            .optional()?)
    }

    /// The tenants of one reseller, by name.
    pub fn list_tenants_of_reseller(&self, reseller: &str) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TENANT_COLS} FROM tenants WHERE reseller = ?1 ORDER BY name"
        ))?;
        let rows = stmt.query_map([reseller], |row| tenant_from_row(row, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One tenant's numbers, by number.
    pub fn list_numbers_of(&self, tenant: &str) -> Result<Vec<Number>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {NUMBER_COLS} FROM numbers n WHERE n.tenant = ?1 ORDER BY n.number"
        ))?;
        let rows = stmt.query_map([tenant], |row| number_from_row(row, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One tenant's SIP users, by username.
    pub fn list_sip_users_of(&self, tenant: &str) -> Result<Vec<SipUser>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SIP_USER_COLS} FROM sip_users WHERE tenant = ?1 ORDER BY username"
        ))?;
        let rows = stmt.query_map([tenant], sip_user_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One tenant's trunks, by name.
    pub fn list_trunks_of(&self, tenant: &str) -> Result<Vec<Trunk>, StoreError> {
        let conn = self.read();
        let trunks: Vec<Trunk> = conn
            .prepare_cached(&format!(
                "SELECT {TRUNK_COLS} FROM trunks WHERE tenant = ?1 ORDER BY name"
            ))?
            .query_map([tenant], trunk_from_row)?
            .collect::<Result<_, _>>()?;
        trunks
            .into_iter()
            .map(|t| with_addresses(&conn, t))
            .collect()
    }

    /// One tenant's routing plans, by name.
    pub fn list_routing_plans_of(&self, tenant: &str) -> Result<Vec<RoutingPlan>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {PLAN_COLS} FROM routing_plans WHERE tenant = ?1 ORDER BY name"
        ))?;
        let rows = stmt.query_map([tenant], plan_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One tenant's announcements, by name.
    pub fn list_announcements_of(&self, tenant: &str) -> Result<Vec<Announcement>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ANNOUNCEMENT_COLS} FROM announcements WHERE tenant = ?1 ORDER BY name"
        ))?;
        let rows = stmt.query_map([tenant], announcement_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What a tenant still owns.
    pub fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        let conn = self.read();
        let count = |table: &str| -> Result<usize, StoreError> {
            let n: i64 = conn
                .prepare_cached(&format!("SELECT count(*) FROM {table} WHERE tenant = ?1"))?
                .query_row([tenant], |row| row.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok(TenantUsage {
            numbers: count("numbers")?,
            sip_users: count("sip_users")?,
            trunks: count("trunks")?,
            routing_plans: count("routing_plans")?,
            announcements: count("announcements")?,
        })
    }

    /// The numbers routed to a plan, by number.
    pub fn numbers_using_plan(&self, tenant: &str, plan: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT number FROM numbers WHERE tenant = ?1 AND routing_plan = ?2 ORDER BY number",
        )?;
        let rows = stmt.query_map([tenant, plan], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a tenant that owns nothing any more (its API keys go with it); false when
    /// absent. A tenant that still owns objects is refused by the database (a constraint
    /// violation): check [`Store::tenant_usage`] first for a readable answer.
    pub fn delete_tenant(&self, name: &str) -> Result<bool, StoreError> {
        self.delete("DELETE FROM tenants WHERE name = ?1", &[name])
    }

    /// Deletes a number; false when absent.
    pub fn delete_number(&self, number: &str) -> Result<bool, StoreError> {
        self.delete("DELETE FROM numbers WHERE number = ?1", &[number])
    }

    /// Deletes a SIP user (and its `account` API keys); false when absent.
    pub fn delete_sip_user(&self, username: &str) -> Result<bool, StoreError> {
        self.delete("DELETE FROM sip_users WHERE username = ?1", &[username])
    }

    /// Deletes a trunk with its inbound addresses; false when absent. Refused by the
    /// database while it is its tenant's `defaultTrunk`.
    pub fn delete_trunk(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        self.delete(
            "DELETE FROM trunks WHERE tenant = ?1 AND name = ?2",
            &[tenant, name],
        )
    }

    /// Deletes a routing plan; false when absent. Refused by the database while a number
    /// routes to it (see [`Store::numbers_using_plan`]).
    pub fn delete_routing_plan(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        self.delete(
            "DELETE FROM routing_plans WHERE tenant = ?1 AND name = ?2",
            &[tenant, name],
        )
    }

    /// Deletes an announcement's row (not its file); false when absent.
    pub fn delete_announcement(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        self.delete(
            "DELETE FROM announcements WHERE tenant = ?1 AND name = ?2",
            &[tenant, name],
        )
    }

    fn delete(&self, sql: &str, key: &[&str]) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        // A transaction so that deferred references (a tenant's defaultTrunk) are checked
        // at commit and a refused delete leaves nothing behind.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(key))?;
        tx.commit()?;
        drop(conn);
        // Only numbers, SIP users and trunks are in the SIP directory; the others cannot
        // be deleted while one of those refers to them.
        let table = sql.split_whitespace().nth(2).unwrap_or("");
        if n > 0 && matches!(table, "numbers" | "sip_users" | "trunks") {
            self.directory_changed();
        }
        Ok(n > 0)
    }
}
