//! Conversions between model types and SQLite values. Times are RFC 3339 UTC text with
//! milliseconds (sortable as text); JSON columns hold serde_json text.

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::de::DeserializeOwned;

use crate::model::{format_time, parse_time, Transport};

/// A time column.
pub(crate) struct SqlTime(pub DateTime<Utc>);

impl FromSql for SqlTime {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        parse_time(value.as_str()?)
            .map(SqlTime)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Text for a time column.
pub(crate) fn time_text(t: &DateTime<Utc>) -> String {
    format_time(t)
}

/// Text for an optional time column.
pub(crate) fn opt_time_text(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.as_ref().map(format_time)
}

/// A JSON text column.
pub(crate) struct SqlJson<T>(pub T);

impl<T: DeserializeOwned> FromSql for SqlJson<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(SqlJson)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl FromSql for Transport {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        Transport::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown transport {s:?}").into()))
    }
}

impl ToSql for Transport {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}
