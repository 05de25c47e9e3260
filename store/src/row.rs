//! Reading typed values out of `AnyRow`s, and the few conversions on the way in.
//!
//! A value the store cannot read (a malformed id, an unknown state, a negative byte
//! count) becomes `sqlx::Error::ColumnDecode` naming the column: it means something
//! other than this store wrote the row.

use std::str::FromStr;

use russh::keys::PublicKey;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::error::StoreError;
use super::model::Timestamp;

fn decode_error(col: &str, source: impl Into<sqlx::error::BoxDynError>) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: source.into(),
    }
}

pub(crate) fn text(row: &AnyRow, col: &str) -> Result<String, sqlx::Error> {
    row.try_get(col)
}

pub(crate) fn opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get(col)
}

pub(crate) fn parsed<T>(row: &AnyRow, col: &str) -> Result<T, sqlx::Error>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text(row, col)?
        .parse()
        .map_err(|e| decode_error(col, Box::new(e)))
}

pub(crate) fn opt_parsed<T>(row: &AnyRow, col: &str) -> Result<Option<T>, sqlx::Error>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    opt_text(row, col)?
        .map(|s| s.parse().map_err(|e| decode_error(col, Box::new(e))))
        .transpose()
}

pub(crate) fn int(row: &AnyRow, col: &str) -> Result<i64, sqlx::Error> {
    row.try_get(col)
}

pub(crate) fn opt_int(row: &AnyRow, col: &str) -> Result<Option<i64>, sqlx::Error> {
    row.try_get(col)
}

/// An unsigned count stored in a BIGINT column.
pub(crate) fn unsigned<T: TryFrom<i64>>(row: &AnyRow, col: &str) -> Result<T, sqlx::Error> {
    T::try_from(int(row, col)?).map_err(|_| decode_error(col, "value out of range"))
}

pub(crate) fn opt_unsigned<T: TryFrom<i64>>(
    row: &AnyRow,
    col: &str,
) -> Result<Option<T>, sqlx::Error> {
    opt_int(row, col)?
        .map(|v| T::try_from(v).map_err(|_| decode_error(col, "value out of range")))
        .transpose()
}

pub(crate) fn time(row: &AnyRow, col: &str) -> Result<Timestamp, sqlx::Error> {
    int(row, col).map(Timestamp::from_unix_seconds)
}

pub(crate) fn opt_time(row: &AnyRow, col: &str) -> Result<Option<Timestamp>, sqlx::Error> {
    Ok(opt_int(row, col)?.map(Timestamp::from_unix_seconds))
}

/// A flag, stored as a BIGINT 0 or 1 (see the first migration for why not BOOLEAN).
pub(crate) fn flag(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    match int(row, col)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(decode_error(col, "flag is neither 0 nor 1")),
    }
}

pub(crate) fn public_key(row: &AnyRow, col: &str) -> Result<PublicKey, sqlx::Error> {
    PublicKey::from_openssh(&text(row, col)?).map_err(|e| decode_error(col, Box::new(e)))
}

/// A count for a BIGINT column; counts past `i64::MAX` (never reached) saturate.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How a public key is stored and looked up: `<algorithm> <base64>`, no comment, so
/// the same key always has the same text.
pub(crate) fn openssh_line(key: &PublicKey) -> Result<String, StoreError> {
    PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map_err(|_| StoreError::Invalid("public key".into()))
}
