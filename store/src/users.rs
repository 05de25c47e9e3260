//! Users.

use sqlx::any::AnyRow;

use super::ids::UserId;
use super::model::{Timestamp, User};
use super::{Store, StoreError, check_user_name, row};

/// The user columns, named plainly even in joins (SQLite leaves unaliased result
/// column names unspecified).
pub(crate) const USER_COLUMNS: &str = "users.id AS id, users.name AS name, \
    users.is_admin AS is_admin, users.created_at AS created_at";

pub(crate) fn user_from_row(r: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row::parsed(r, "id")?,
        name: row::text(r, "name")?,
        is_admin: row::flag(r, "is_admin")?,
        created_at: row::time(r, "created_at")?,
    })
}

impl Store {
    /// Creates a user. A taken name is a `Conflict`.
    pub async fn create_user(&self, name: &str, is_admin: bool) -> Result<User, StoreError> {
        check_user_name(name)?;
        let user = User {
            id: UserId::generate(),
            name: name.to_owned(),
            is_admin,
            created_at: Timestamp::now(),
        };
        sqlx::query("INSERT INTO users (id, name, is_admin, created_at) VALUES ($1, $2, $3, $4)")
            .bind(user.id.as_str())
            .bind(name)
            .bind(i64::from(is_admin))
            .bind(user.created_at.unix_seconds())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                StoreError::from_write(
                    e,
                    || format!("a user named {name:?} already exists"),
                    "user",
                )
            })?;
        Ok(user)
    }

    pub async fn get_user(&self, id: &UserId) -> Result<User, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| user_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound("user"))
    }

    pub async fn get_user_by_name(&self, name: &str) -> Result<User, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1");
        sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| user_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound("user"))
    }

    /// All users, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(user_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
