//! How domain values sit in SQLite columns, and the few query helpers every table uses.
//! Ids are stored as text, outbox kinds by name, call ids as integers; a stored value
//! that does not read back as its type is an error, never a default.

use rusqlite::{
    Connection, OptionalExtension, Row, ToSql,
    types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef},
};
use uuid::Uuid;

use crate::domain::{CallId, CallKind, CustomerId, ProviderId, RequestId, SessionId, TokenId};

/// Statements through SQLite's statement cache: a redemption runs the same few
/// statements every time, and parsing them anew was a good share of its CPU.
pub(super) trait Cached {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// `query_row` that returns `None` for no row.
pub(super) fn optional<T>(result: rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    result.optional()
}

/// UUID ids are stored as their hyphenated text.
macro_rules! uuid_column {
    ($($name:ident),*) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.to_string()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                Uuid::try_parse(value.as_str()?)
                    .map(Self::from_uuid)
                    .map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    )*};
}

uuid_column!(TokenId, SessionId, RequestId);

/// Marketplace ids are stored as given (validated when they were written).
macro_rules! text_column {
    ($($name:ident),*) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                String::column_result(value).map(Self::from_stored)
            }
        }
    )*};
}

text_column!(ProviderId, CustomerId);

/// An outbox call's id is its row's `job_id`.
impl ToSql for CallId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.get()))
    }
}

impl FromSql for CallId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let id = value.as_i64()?;
        Self::parse(id).map_err(|_| FromSqlError::OutOfRange(id))
    }
}

/// `outbox.kind`, as the schema's CHECK names them.
impl CallKind {
    const CREATE_CONVERSATION: &str = "create_conversation";
    const UPDATE_CUSTOMER: &str = "update_customer";
}

impl ToSql for CallKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(match self {
            Self::CreateConversation => Self::CREATE_CONVERSATION,
            Self::UpdateCustomer => Self::UPDATE_CUSTOMER,
        }))
    }
}

impl FromSql for CallKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            Self::CREATE_CONVERSATION => Ok(Self::CreateConversation),
            Self::UPDATE_CUSTOMER => Ok(Self::UpdateCustomer),
            other => Err(FromSqlError::Other(
                format!("unknown outbox kind {other:?}").into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T: FromSql>(sql: &str) -> rusqlite::Result<T> {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row(sql, [], |row| row.get("v"))
    }

    #[test]
    fn outbox_kinds_round_trip_and_unknown_ones_are_refused() {
        for kind in [CallKind::CreateConversation, CallKind::UpdateCustomer] {
            let conn = Connection::open_in_memory().unwrap();
            let back: CallKind = conn
                .query_row("SELECT ?1 AS v", [kind], |row| row.get("v"))
                .unwrap();
            assert_eq!(back, kind);
        }
        assert!(read::<CallKind>("SELECT 'delete_everything' AS v").is_err());
        assert!(read::<CallKind>("SELECT 1 AS v").is_err());
    }

    #[test]
    fn ids_read_back_as_written_and_garbage_is_refused() {
        let id = SessionId::new();
        let conn = Connection::open_in_memory().unwrap();
        let back: SessionId = conn
            .query_row("SELECT ?1 AS v", [id], |row| row.get("v"))
            .unwrap();
        assert_eq!(back, id);
        assert!(read::<SessionId>("SELECT 'not-a-uuid' AS v").is_err());
        assert!(read::<CallId>("SELECT 0 AS v").is_err());
        assert_eq!(read::<CallId>("SELECT 7 AS v").unwrap().get(), 7);
    }
}
