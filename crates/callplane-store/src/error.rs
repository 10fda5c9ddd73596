//! The error type of the store. SQLite errors keep their source so callers can tell a busy
//! database (retry) from a constraint violation (bad input) from corruption.

use std::path::PathBuf;

use crate::model::FieldError;

/// Anything that can go wrong opening, migrating, reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade callplane")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("database migration to version {version} failed: {source}")]
    Migration {
        version: i64,
        source: rusqlite::Error,
    },
    #[error("invalid provisioning: {}", join_errors(.0))]
    Invalid(Vec<FieldError>),
    /// A create found the object already there; `object` is its label (`number 100`).
    #[error("{object} already exists")]
    Exists { object: String },
    #[error("cannot set up {path}: {source}")]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A delete that would leave the system without a way in (the last admin API key).
    #[error("{0}")]
    Refused(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// True when SQLite reported the database busy or locked: the operation may succeed if retried.
    pub fn is_busy(&self) -> bool {
        let e = match self {
            StoreError::Sqlite(e) => e,
            StoreError::Open { source, .. } | StoreError::Migration { source, .. } => source,
            _ => return false,
        };
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    /// True when a UNIQUE, FOREIGN KEY or CHECK constraint rejected the write.
    pub fn is_constraint_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
        )
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
