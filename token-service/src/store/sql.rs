//! How domain values sit in SQLite columns, and the few query helpers every table uses.
//! Ids are stored as text, outbox kinds by name, call ids as integers; a stored value
//! that does not read back as its type is an error, never a default.

use rusqlite::{
    Connection, OptionalExtension, Row, ToSql,
    types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef},
};
use uuid::Uuid;

use crate::domain::{
    CallId, CallKind, ConversationId, CustomerId, ProviderId, RequestId, SessionId, Timestamp,
    TokenId,
};

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

/// Every row a cached statement returns, each mapped by `f`; `context` names the query
/// in an error.
pub(super) fn rows<T, P, F>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: F,
    context: &'static str,
) -> Result<Vec<T>, crate::error::Error>
where
    P: rusqlite::Params,
    F: FnMut(&Row<'_>) -> rusqlite::Result<T>,
{
    use crate::error::StoreResultExt;
    let mut stmt = conn.prepare_cached(sql).context(context)?;
    stmt.query_map(params, f)
        .context(context)?
        .collect::<rusqlite::Result<Vec<T>>>()
        .context(context)
}

/// `query_row` that returns `None` for no row.
pub(super) fn optional<T>(result: rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    result.optional()
}

/// A time column (Unix microseconds, see `domain::to_micros`); a value no date can hold
/// is an error, not 1970.
pub(super) fn time_at(row: &Row<'_>, column: &str) -> rusqlite::Result<Timestamp> {
    optional_time_at(row, column)?.ok_or(rusqlite::Error::InvalidColumnType(
        row.as_ref().column_index(column)?,
        column.to_owned(),
        Type::Null,
    ))
}

/// A time column that may be NULL (not revoked, not ended).
pub(super) fn optional_time_at(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<Timestamp>> {
    let Some(micros) = row.get::<_, Option<i64>>(column)? else {
        return Ok(None);
    };
    chrono::DateTime::from_timestamp_micros(micros)
        .map(Some)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(
            row.as_ref().column_index(column)?,
            micros,
        ))
}

/// `ToSql` and `FromSql` for a domain type: how it is written, and how it is read back.
macro_rules! column {
    ($name:ty, write: $write:expr, read: $read:expr) => {
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                let write: fn(&$name) -> ToSqlOutput<'_> = $write;
                Ok(write(self))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let read: fn(ValueRef<'_>) -> FromSqlResult<$name> = $read;
                read(value)
            }
        }
    };
}

// UUID ids as their hyphenated text.
column!(TokenId, write: |id| ToSqlOutput::from(id.to_string()), read: |v| uuid(v).map(TokenId::from_uuid));
column!(SessionId, write: |id| ToSqlOutput::from(id.to_string()), read: |v| uuid(v).map(SessionId::from_uuid));
column!(RequestId, write: |id| ToSqlOutput::from(id.to_string()), read: |v| uuid(v).map(RequestId::from_uuid));
// Marketplace ids as given (validated when they were written).
column!(ProviderId, write: |id| ToSqlOutput::from(id.as_str()), read: |v| String::column_result(v).map(ProviderId::from_stored));
column!(CustomerId, write: |id| ToSqlOutput::from(id.as_str()), read: |v| String::column_result(v).map(CustomerId::from_stored));
column!(ConversationId, write: |id| ToSqlOutput::from(id.as_str()), read: |v| String::column_result(v).map(ConversationId::from_stored));
// An outbox call's id is its row's `job_id`.
column!(CallId, write: |id| ToSqlOutput::from(id.get()), read: call_id);
// `outbox.kind`, by the names the schema's CHECK allows.
column!(CallKind, write: |kind| ToSqlOutput::from(kind_name(*kind)), read: call_kind);

fn uuid(value: ValueRef<'_>) -> FromSqlResult<Uuid> {
    Uuid::try_parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
}

fn call_id(value: ValueRef<'_>) -> FromSqlResult<CallId> {
    let id = value.as_i64()?;
    CallId::parse(id).map_err(|_| FromSqlError::OutOfRange(id))
}

const CREATE_CONVERSATION: &str = "create_conversation";
const UPDATE_CUSTOMER: &str = "update_customer";

fn kind_name(kind: CallKind) -> &'static str {
    match kind {
        CallKind::CreateConversation => CREATE_CONVERSATION,
        CallKind::UpdateCustomer => UPDATE_CUSTOMER,
    }
}

fn call_kind(value: ValueRef<'_>) -> FromSqlResult<CallKind> {
    match value.as_str()? {
        CREATE_CONVERSATION => Ok(CallKind::CreateConversation),
        UPDATE_CUSTOMER => Ok(CallKind::UpdateCustomer),
        other => Err(FromSqlError::Other(
            format!("unknown outbox kind {other:?}").into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T: FromSql>(sql: &str) -> rusqlite::Result<T> {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row(sql, [], |row| row.get("v"))
    }

    /// Writes `value` and reads it back.
    fn round_trip<T: ToSql + FromSql>(value: T) -> T {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row("SELECT ?1 AS v", [value], |row| row.get("v"))
            .unwrap()
    }

    #[test]
    fn outbox_kinds_round_trip_and_unknown_ones_are_refused() {
        for kind in [CallKind::CreateConversation, CallKind::UpdateCustomer] {
            assert_eq!(round_trip(kind), kind);
        }
        assert!(read::<CallKind>("SELECT 'delete_everything' AS v").is_err());
        assert!(read::<CallKind>("SELECT 1 AS v").is_err());
    }

    #[test]
    fn ids_read_back_as_written_and_garbage_is_refused() {
        let id = SessionId::new();
        assert_eq!(round_trip(id), id);
        let provider = ProviderId::from_stored("prov-1".into());
        assert_eq!(round_trip(provider.clone()), provider);
        assert!(read::<SessionId>("SELECT 'not-a-uuid' AS v").is_err());
        assert!(read::<CallId>("SELECT 0 AS v").is_err());
        assert_eq!(read::<CallId>("SELECT 7 AS v").unwrap().get(), 7);
    }

    #[test]
    fn a_time_no_date_can_hold_is_an_error_not_1970() {
        let conn = Connection::open_in_memory().unwrap();
        let time = |sql: &str| conn.query_row(sql, [], |row| time_at(row, "t"));
        assert_eq!(time("SELECT 0 AS t").unwrap().timestamp(), 0);
        assert!(time("SELECT 9223372036854775807 AS t").is_err());
        assert!(time("SELECT NULL AS t").is_err());
    }
}
