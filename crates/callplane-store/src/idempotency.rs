//! Kept answers of requests made with an idempotency key (the API's `Idempotency-Key` and the
//! events socket's command ids): found again after a restart. Rows are keyed by hashes (of the
//! caller and key, and of the request); the answer is what was sent back.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use crate::error::StoreError;
use crate::sql::time_text;
use crate::Store;

/// One kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentAnswer {
    /// The hash of the request it answered.
    pub request: [u8; 32],
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

fn hash(v: Vec<u8>) -> Option<[u8; 32]> {
    v.try_into().ok()
}

impl Store {
    /// Keeps `answer` under `id` (replacing an older one).
    pub fn put_idempotent(
        &self,
        id: &[u8; 32],
        answer: &IdempotentAnswer,
    ) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT OR REPLACE INTO idempotent_answers \
                 (id, request, status, content_type, location, body, stored) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                &id[..],
                &answer.request[..],
                answer.status,
                answer.content_type,
                answer.location,
                answer.body,
                time_text(&Utc::now())
            ])?;
        Ok(())
    }

    /// The answer kept under `id` since `since`.
    pub fn get_idempotent(
        &self,
        id: &[u8; 32],
        since: DateTime<Utc>,
    ) -> Result<Option<IdempotentAnswer>, StoreError> {
        let row = self
            .read()
            .prepare_cached(
                "SELECT request, status, content_type, location, body FROM idempotent_answers \
                 WHERE id = ?1 AND stored >= ?2",
            )?
            .query_row(params![&id[..], time_text(&since)], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, u16>(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .optional()?;
        Ok(
            row.and_then(|(request, status, content_type, location, body)| {
                Some(IdempotentAnswer {
                    request: hash(request)?,
                    status,
                    content_type,
                    location,
                    body,
                })
            }),
        )
    }

    /// Forgets the answers kept before `before`; how many.
    pub fn prune_idempotent(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        Ok(self
            .conn()
            .prepare_cached("DELETE FROM idempotent_answers WHERE stored < ?1")?
            .execute([time_text(&before)])?)
    }
}
