//! Writing and reading call detail records: a CDR, its legs and its variables go into
//! `cdrs`, `cdr_legs` and `cdr_variables` in one transaction, so a call is stored whole or not at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::error::StoreError;
use crate::model::{Cdr, CdrLeg, Recording};
use crate::sql::{opt_time_text, time_text, SqlTime};
use crate::store::Store;

const CDR_COLS: &str = "call_id, sip_call_id, tenant, number, caller, start_time, answer_time, \
                        end_time, talk_time_ms, hangup_cause, hangup_by, sip_status, recording_path";

impl Store {
    /// Writes one finished call. A second CDR with the same `call_id` is a constraint
    /// violation ([`StoreError::is_constraint_violation`]), never a silent overwrite.
    pub fn insert_cdr(&self, cdr: &Cdr) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_one(&tx, cdr)?;
        tx.commit()?;
        Ok(())
    }

    /// Writes several finished calls in one transaction (one commit, so one sync to disk,
    /// for the whole batch) and returns one result per CDR, in order. Each CDR goes in under
    /// its own savepoint: one that fails (a duplicate `call_id`) is rolled back alone and the
    /// others are kept. An error of the transaction itself (busy, disk) is returned as `Err`
    /// and nothing of the batch is written.
    pub fn insert_cdrs(&self, cdrs: &[&Cdr]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut conn = self.conn();
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(cdrs.len());
        for cdr in cdrs {
            let sp = tx.savepoint()?;
            match insert_one(&sp, cdr) {
                Ok(()) => {
                    sp.commit()?;
                    results.push(Ok(()));
                }
                // Dropping the savepoint rolls it back.
                Err(e) => results.push(Err(e)),
            }
        }
        tx.commit()?;
        Ok(results)
    }

    /// One CDR with its legs (by index) and variables.
    pub fn get_cdr(&self, call_id: &str) -> Result<Option<Cdr>, StoreError> {
        let mut conn = self.read();
        let tx = conn.transaction()?;
        let cdr = tx
            .prepare_cached(&format!("SELECT {CDR_COLS} FROM cdrs WHERE call_id = ?1"))?
            .query_row([call_id], cdr_from_row)
            .optional()?;
        let cdr = cdr.map(|c| with_details(&tx, c)).transpose()?;
        tx.commit()?;
        Ok(cdr)
    }

    /// The newest `limit` CDRs (by start time, newest first), with legs and variables.
    pub fn list_cdrs(&self, limit: usize) -> Result<Vec<Cdr>, StoreError> {
        self.query_cdrs(&CdrQuery {
            limit,
            ..CdrQuery::default()
        })
    }
}

/// Which CDRs `query_cdrs` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct CdrQuery {
    /// Only these tenants' CDRs; `None`: every tenant's (and those of calls refused before
    /// they reached one).
    pub tenants: Option<Vec<String>>,
    /// Only calls that involved this SIP user.
    pub line: Option<String>,
    /// Only calls that came in on (or were placed for) this number.
    pub number: Option<String>,
    /// Started at or after / before.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Older than this `(start time, call id)`: the page after the one that ended there.
    pub after: Option<(chrono::DateTime<chrono::Utc>, String)>,
    pub limit: usize,
}

impl Store {
    /// A page of CDRs matching `q`, newest first (start time, then call id), with legs,
    /// variables and lines.
    pub fn query_cdrs(&self, q: &CdrQuery) -> Result<Vec<Cdr>, StoreError> {
        use rusqlite::types::Value;
        let mut sql = format!("SELECT {CDR_COLS} FROM cdrs WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        let mut arg = |v: Value| {
            args.push(v);
            format!("?{}", args.len())
        };
        if let Some(tenants) = &q.tenants {
            let list: Vec<String> = tenants
                .iter()
                .map(|t| arg(Value::Text(t.clone())))
                .collect();
            if list.is_empty() {
                return Ok(Vec::new());
            }
            sql += &format!(" AND tenant IN ({})", list.join(", "));
        }
        if let Some(l) = &q.line {
            let a = arg(Value::Text(l.clone()));
            sql += &format!(" AND call_id IN (SELECT call_id FROM cdr_lines WHERE line = {a})");
        }
        if let Some(n) = &q.number {
            let a = arg(Value::Text(n.clone()));
            sql += &format!(" AND number = {a}");
        }
        if let Some(t) = &q.from {
            let a = arg(Value::Text(time_text(t)));
            sql += &format!(" AND start_time >= {a}");
        }
        if let Some(t) = &q.to {
            let a = arg(Value::Text(time_text(t)));
            sql += &format!(" AND start_time < {a}");
        }
        if let Some((t, id)) = &q.after {
            let a = arg(Value::Text(time_text(t)));
            let b = arg(Value::Text(id.clone()));
            sql += &format!(" AND (start_time < {a} OR (start_time = {a} AND call_id < {b}))");
        }
        let limit = arg(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
        sql += &format!(" ORDER BY start_time DESC, call_id DESC LIMIT {limit}");
        let mut conn = self.read();
        let tx = conn.transaction()?;
        let cdrs: Vec<Cdr> = tx
            .prepare(&sql)?
            .query_map(rusqlite::params_from_iter(args), cdr_from_row)?
            .collect::<Result<_, _>>()?;
        let cdrs = cdrs
            .into_iter()
            .map(|c| with_details(&tx, c))
            .collect::<Result<_, _>>()?;
        tx.commit()?;
        Ok(cdrs)
    }
}

/// A CDR row without legs and variables.
fn cdr_from_row(row: &Row<'_>) -> rusqlite::Result<Cdr> {
    let SqlTime(start_time) = row.get(5)?;
    let answer_time: Option<SqlTime> = row.get(6)?;
    let SqlTime(end_time) = row.get(7)?;
    Ok(Cdr {
        call_id: row.get(0)?,
        sip_call_id: row.get(1)?,
        tenant: row.get(2)?,
        number: row.get(3)?,
        caller: row.get(4)?,
        start_time,
        answer_time: answer_time.map(|t| t.0),
        end_time,
        talk_time_ms: row.get(8)?,
        hangup_cause: row.get(9)?,
        hangup_by: row.get(10)?,
        sip_status: row.get(11)?,
        recording_path: row.get(12)?,
        legs: Vec::new(),
        variables: BTreeMap::new(),
        lines: Vec::new(),
        recordings: Vec::new(),
    })
}

const RECORDING_COLS: &str =
    "id, call_id, tenant, path, channels, start_time, end_time, duration_ms, size_bytes";

fn recording_from_row(row: &Row<'_>) -> rusqlite::Result<Recording> {
    let SqlTime(start_time) = row.get(5)?;
    let SqlTime(end_time) = row.get(6)?;
    Ok(Recording {
        id: row.get(0)?,
        call_id: row.get(1)?,
        tenant: row.get(2)?,
        path: row.get(3)?,
        channels: row.get(4)?,
        start_time,
        end_time,
        duration_ms: row.get(7)?,
        size_bytes: row.get(8)?,
    })
}

impl Store {
    /// Records a finished recording.
    pub fn insert_recording(&self, r: &Recording) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(&format!(
                "INSERT INTO recordings ({RECORDING_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                r.id,
                r.call_id,
                r.tenant,
                r.path,
                r.channels,
                time_text(&r.start_time),
                time_text(&r.end_time),
                r.duration_ms,
                r.size_bytes
            ])?;
        Ok(())
    }

    /// Numbers a TENIOS makecall request for `call_id`: ids count up across restarts.
    pub fn insert_makecall(&self, call_id: &str, tenant: &str) -> Result<u64, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO makecalls (call_id, tenant, created) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![call_id, tenant, time_text(&Utc::now())])?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// The call and tenant of makecall request `id`.
    pub fn get_makecall(&self, id: u64) -> Result<Option<(String, String)>, StoreError> {
        let found = self
            .read()
            .prepare_cached("SELECT call_id, tenant FROM makecalls WHERE id = ?1")?
            .query_row([id as i64], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(found)
    }

    /// Up to `limit` recordings that ended before `cutoff`, oldest first: what a retention
    /// period lets go.
    pub fn recordings_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Recording>, StoreError> {
        let rows = self
            .read()
            .prepare_cached(&format!(
                "SELECT {RECORDING_COLS} FROM recordings WHERE end_time < ?1 \
                 ORDER BY end_time, id LIMIT ?2"
            ))?
            .query_map(
                params![time_text(&cutoff), limit as i64],
                recording_from_row,
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Forgets a recording (its file is the caller's to remove first); whether it was there.
    pub fn delete_recording(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .prepare_cached("DELETE FROM recordings WHERE id = ?1")?
            .execute([id])?;
        Ok(n > 0)
    }

    /// One finished recording, with the lines of its call (from the call's CDR, once it is
    /// written: an `account` key sees a recording of its line's calls).
    pub fn get_recording(&self, id: &str) -> Result<Option<(Recording, Vec<String>)>, StoreError> {
        let mut conn = self.read();
        let tx = conn.transaction()?;
        let rec = tx
            .prepare_cached(&format!(
                "SELECT {RECORDING_COLS} FROM recordings WHERE id = ?1"
            ))?
            .query_row([id], recording_from_row)
            .optional()?;
        let out = match rec {
            Some(r) => {
                let lines = tx
                    .prepare_cached("SELECT line FROM cdr_lines WHERE call_id = ?1 ORDER BY line")?
                    .query_map([&r.call_id], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                Some((r, lines))
            }
            None => None,
        };
        tx.commit()?;
        Ok(out)
    }
}

fn leg_from_row(row: &Row<'_>) -> rusqlite::Result<CdrLeg> {
    let SqlTime(start_time) = row.get(4)?;
    let answer_time: Option<SqlTime> = row.get(5)?;
    let SqlTime(end_time) = row.get(6)?;
    Ok(CdrLeg {
        leg_index: row.get(0)?,
        direction: row.get(1)?,
        destination_type: row.get(2)?,
        destination: row.get(3)?,
        start_time,
        answer_time: answer_time.map(|t| t.0),
        end_time,
        sip_status: row.get(7)?,
        hangup_cause: row.get(8)?,
    })
}

fn with_details(conn: &Connection, mut cdr: Cdr) -> Result<Cdr, StoreError> {
    cdr.legs = conn
        .prepare_cached(
            "SELECT leg_index, direction, destination_type, destination, start_time, \
             answer_time, end_time, sip_status, hangup_cause FROM cdr_legs \
             WHERE call_id = ?1 ORDER BY leg_index",
        )?
        .query_map([&cdr.call_id], leg_from_row)?
        .collect::<Result<_, _>>()?;
    cdr.variables = conn
        .prepare_cached("SELECT name, value FROM cdr_variables WHERE call_id = ?1")?
        .query_map([&cdr.call_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    cdr.lines = conn
        .prepare_cached("SELECT line FROM cdr_lines WHERE call_id = ?1 ORDER BY line")?
        .query_map([&cdr.call_id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    cdr.recordings = conn
        .prepare_cached(&format!(
            "SELECT {RECORDING_COLS} FROM recordings WHERE call_id = ?1 ORDER BY start_time, id"
        ))?
        .query_map([&cdr.call_id], recording_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(cdr)
}

/// The inserts of one CDR, inside the caller's transaction or savepoint.
fn insert_one(tx: &Connection, cdr: &Cdr) -> Result<(), StoreError> {
    tx.prepare_cached(&format!(
            "INSERT INTO cdrs ({CDR_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))?
        .execute(params![
            cdr.call_id,
            cdr.sip_call_id,
            cdr.tenant,
            cdr.number,
            cdr.caller,
            time_text(&cdr.start_time),
            opt_time_text(&cdr.answer_time),
            time_text(&cdr.end_time),
            cdr.talk_time_ms,
            cdr.hangup_cause,
            cdr.hangup_by,
            cdr.sip_status,
            cdr.recording_path
        ])?;
    {
        let mut insert_leg = tx.prepare_cached(
            "INSERT INTO cdr_legs (call_id, leg_index, direction, destination_type, \
                 destination, start_time, answer_time, end_time, sip_status, hangup_cause) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for leg in &cdr.legs {
            insert_leg.execute(params![
                cdr.call_id,
                leg.leg_index,
                leg.direction,
                leg.destination_type,
                leg.destination,
                time_text(&leg.start_time),
                opt_time_text(&leg.answer_time),
                time_text(&leg.end_time),
                leg.sip_status,
                leg.hangup_cause
            ])?;
        }
        let mut insert_var = tx.prepare_cached(
            "INSERT INTO cdr_variables (call_id, name, value) VALUES (?1, ?2, ?3)",
        )?;
        for (name, value) in &cdr.variables {
            insert_var.execute(params![cdr.call_id, name, value])?;
        }
        let mut insert_line =
            tx.prepare_cached("INSERT OR IGNORE INTO cdr_lines (call_id, line) VALUES (?1, ?2)")?;
        for line in &cdr.lines {
            insert_line.execute(params![cdr.call_id, line])?;
        }
    }
    Ok(())
}
