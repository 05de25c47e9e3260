//! Users' API keys (stored hashed) and SSH public keys.

use russh::keys::PublicKey;
use sqlx::any::AnyRow;
use warren_keys::{SecretHash, generate_secret, secret_prefix, verify_secret};

use super::events::TierEvent;
use super::ids::{ApiKeyId, SshKeyId, UserId};
use super::model::{ApiKey, ApiKeyOwner, CreatedApiKey, SshKey, Timestamp, User};
use super::users::{USER_COLUMNS, user_from_row};
use super::{Store, StoreError, check_name, row};

/// What [`warren_keys::generate_secret`] puts in front of API keys.
const API_KEY_KIND: &str = "wk";
/// `last_used_at` is rewritten at most this often, so authenticating is not a write
/// per request.
const LAST_USED_GRANULARITY_S: i64 = 60;

const API_KEY_COLUMNS: &str = "id, user_id, name, prefix, created_at, last_used_at, revoked_at";
const SSH_KEY_COLUMNS: &str = "id, user_id, name, public_key, fingerprint, created_at";

fn api_key_from_row(r: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: row::parsed(r, "id")?,
        user_id: row::parsed(r, "user_id")?,
        name: row::text(r, "name")?,
        prefix: row::text(r, "prefix")?,
        created_at: row::time(r, "created_at")?,
        last_used_at: row::opt_time(r, "last_used_at")?,
        revoked_at: row::opt_time(r, "revoked_at")?,
    })
}

fn ssh_key_from_row(r: &AnyRow) -> Result<SshKey, sqlx::Error> {
    Ok(SshKey {
        id: row::parsed(r, "id")?,
        user_id: row::parsed(r, "user_id")?,
        name: row::text(r, "name")?,
        public_key: row::public_key(r, "public_key")?,
        fingerprint: row::text(r, "fingerprint")?,
        created_at: row::time(r, "created_at")?,
    })
}

impl Store {
    /// Creates an API key (`wk_…`) for `user`. The secret is in the result only; the
    /// database keeps its hash and its first 12 characters.
    pub async fn create_api_key(
        &self,
        user: &UserId,
        name: &str,
    ) -> Result<CreatedApiKey, StoreError> {
        check_name("API key name", name)?;
        let (secret, hash) = generate_secret(API_KEY_KIND);
        let key = ApiKey {
            id: ApiKeyId::generate(),
            user_id: user.clone(),
            name: name.to_owned(),
            prefix: secret_prefix(secret.expose()).to_owned(),
            created_at: Timestamp::now(),
            last_used_at: None,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.id.as_str())
        .bind(user.as_str())
        .bind(name)
        .bind(key.prefix.as_str())
        .bind(hash.as_str())
        .bind(key.created_at.unix_seconds())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, || "API key already exists".into(), "user"))?;
        Ok(CreatedApiKey { key, secret })
    }

    /// A user's API keys, revoked ones included, oldest first.
    pub async fn list_api_keys(&self, user: &UserId) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(api_key_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Revokes one of `user`'s API keys. Revoking a revoked key is a no-op (the first
    /// revocation time stays); someone else's key is `NotFound`.
    pub async fn revoke_api_key(&self, user: &UserId, key: &ApiKeyId) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND user_id = $3",
        )
        .bind(Timestamp::now().unix_seconds())
        .bind(key.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        self.api_keys.forget(key);
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("API key"));
        }
        // Every gateway forgets it too, and ends the logins made with it.
        self.publish(TierEvent::ApiKeyRevoked { key: key.clone() })
            .await;
        Ok(())
    }

    /// Whose unrevoked API key `secret` is, if anyone's: looks the key up by its
    /// prefix, then compares hashes in constant time. Records the use. A key verified
    /// in the last few seconds is answered from memory (`key_cache`); revoking it
    /// here forgets it at once.
    pub async fn find_user_by_api_key(
        &self,
        secret: &str,
    ) -> Result<Option<ApiKeyOwner>, StoreError> {
        if let Some(hit) = self.api_keys.get(secret) {
            self.record_use(secret, &hit.owner.key_id, hit.last_used)
                .await?;
            return Ok(Some(hit.owner));
        }
        let generation = self.api_keys.generation();
        let sql = format!(
            "SELECT api_keys.id AS key_id, api_keys.hash AS hash, \
             api_keys.last_used_at AS last_used_at, {USER_COLUMNS} \
             FROM api_keys JOIN users ON users.id = api_keys.user_id \
             WHERE api_keys.prefix = $1 AND api_keys.revoked_at IS NULL"
        );
        let rows = sqlx::query(&sql)
            .bind(secret_prefix(secret))
            .fetch_all(&self.pool)
            .await?;
        // Prefixes are 54 random bits, so there is almost never more than one row;
        // every candidate is checked anyway, none skipped early.
        let mut found: Option<(ApiKeyId, User, Option<i64>)> = None;
        for r in &rows {
            let hash: SecretHash = row::parsed(r, "hash")?;
            if verify_secret(secret, &hash) {
                let last_used = sqlx::Row::try_get::<Option<i64>, _>(r, "last_used_at")?;
                found = Some((row::parsed(r, "key_id")?, user_from_row(r)?, last_used));
            }
        }
        let Some((key_id, user, last_used)) = found else {
            return Ok(None);
        };
        let owner = ApiKeyOwner { user, key_id };
        self.api_keys.put(secret, &owner, last_used, generation);
        self.record_use(secret, &owner.key_id, last_used).await?;
        Ok(Some(owner))
    }

    /// Writes the key's `last_used_at` if the stored one is older than
    /// [`LAST_USED_GRANULARITY_S`].
    async fn record_use(
        &self,
        secret: &str,
        key_id: &ApiKeyId,
        last_used: Option<i64>,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now().unix_seconds();
        // A write on every request would take SQLite's write lock each time; the
        // timestamp only needs LAST_USED_GRANULARITY_S precision.
        if last_used.is_some_and(|t| t > now - LAST_USED_GRANULARITY_S) {
            return Ok(());
        }
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 \
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(now)
        .bind(key_id.as_str())
        .bind(now - LAST_USED_GRANULARITY_S)
        .execute(&self.pool)
        .await?;
        self.api_keys.used(secret, now);
        Ok(())
    }

    /// Registers an SSH public key for `user` (its comment is dropped; `name` labels
    /// it). The same key twice for one user is a `Conflict`; several users may
    /// register the same key.
    pub async fn add_ssh_key(
        &self,
        user: &UserId,
        name: &str,
        public_key: &PublicKey,
    ) -> Result<SshKey, StoreError> {
        check_name("SSH key name", name)?;
        let line = row::openssh_line(public_key)?;
        let key = SshKey {
            id: SshKeyId::generate(),
            user_id: user.clone(),
            name: name.to_owned(),
            public_key: PublicKey::new(public_key.key_data().clone(), ""),
            fingerprint: warren_keys::fingerprint(public_key),
            created_at: Timestamp::now(),
        };
        sqlx::query(
            "INSERT INTO ssh_keys (id, user_id, name, public_key, fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.id.as_str())
        .bind(user.as_str())
        .bind(name)
        .bind(line.as_str())
        .bind(key.fingerprint.as_str())
        .bind(key.created_at.unix_seconds())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            StoreError::from_write(
                e,
                || "this SSH key is already registered to the user".into(),
                "user",
            )
        })?;
        Ok(key)
    }

    /// A user's SSH keys, oldest first.
    pub async fn list_ssh_keys(&self, user: &UserId) -> Result<Vec<SshKey>, StoreError> {
        let sql = format!(
            "SELECT {SSH_KEY_COLUMNS} FROM ssh_keys WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(ssh_key_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Deletes one of `user`'s SSH keys; someone else's is `NotFound`.
    pub async fn delete_ssh_key(&self, user: &UserId, key: &SshKeyId) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM ssh_keys WHERE id = $1 AND user_id = $2")
            .bind(key.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("SSH key"));
        }
        Ok(())
    }

    /// The users who registered `public_key`, by name (usually one; empty if none).
    pub async fn find_users_by_ssh_key(
        &self,
        public_key: &PublicKey,
    ) -> Result<Vec<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM ssh_keys JOIN users ON users.id = ssh_keys.user_id \
             WHERE ssh_keys.fingerprint = $1 AND ssh_keys.public_key = $2 ORDER BY users.name"
        );
        let rows = sqlx::query(&sql)
            .bind(warren_keys::fingerprint(public_key))
            .bind(row::openssh_line(public_key)?)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(user_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
