//! A gateway tier's shared rows: the sealed keys every gateway presents
//! (`gateway_keys`) and the live members (`gateways`), each registered at start,
//! heartbeating, removed on a clean stop.
//!
//! Not for: sealing or opening the keys (the gateway does that with the operator's
//! cluster secret, `warren_keys::cluster`; the store only ever sees sealed text), or
//! deciding how old a heartbeat may be (the caller passes the cut-off).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Store, StoreError, row};

/// Longest address a gateway may register (a host name and a port).
const MAX_ADDRESS_LEN: usize = 255;

/// A gateway of the tier, as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayMember {
    /// Random per process start (`gw-…`).
    pub id: String,
    /// The SSH front door, HOST:PORT as users reach it.
    pub ssh_address: String,
    /// The runners' endpoint, HOST:PORT as runners reach it.
    pub runner_address: String,
    /// Unix milliseconds.
    pub heartbeat_at_ms: i64,
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An id or address: 1 to 255 characters, no spaces or control characters.
fn check_address(what: &str, address: &str) -> Result<(), StoreError> {
    if address.is_empty()
        || address.len() > MAX_ADDRESS_LEN
        || address.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(StoreError::Invalid(what.to_owned()));
    }
    Ok(())
}

impl Store {
    /// The sealed key in `slot`, if a gateway stored one.
    pub async fn sealed_gateway_key(&self, slot: &str) -> Result<Option<String>, StoreError> {
        let found = sqlx::query("SELECT sealed FROM gateway_keys WHERE slot = $1")
            .bind(slot)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.map(|r| row::text(&r, "sealed")).transpose()?)
    }

    /// Stores `sealed` in `slot` unless a key is there already (of two gateways
    /// starting at once, the first write wins; both then read it back).
    pub async fn put_sealed_gateway_key_if_absent(
        &self,
        slot: &str,
        sealed: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateway_keys (slot, sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (slot) DO NOTHING",
        )
        .bind(slot)
        .bind(sealed)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Registers gateway `member` (or refreshes its heartbeat and addresses).
    pub async fn heartbeat_gateway(&self, member: &GatewayMember) -> Result<(), StoreError> {
        check_address("gateway id", &member.id)?;
        check_address("gateway SSH address", &member.ssh_address)?;
        check_address("gateway runner address", &member.runner_address)?;
        sqlx::query(
            "INSERT INTO gateways (id, ssh_address, runner_address, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET ssh_address = $2, runner_address = $3, \
             heartbeat_at = $4",
        )
        .bind(member.id.as_str())
        .bind(member.ssh_address.as_str())
        .bind(member.runner_address.as_str())
        .bind(member.heartbeat_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes gateway `id` (a clean stop).
    pub async fn remove_gateway(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM gateways WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The gateways whose heartbeat is at most `fresh` old, oldest start first;
    /// rows older than `expire` are deleted on the way (gateways that died).
    pub async fn live_gateways(
        &self,
        fresh: Duration,
        expire: Duration,
    ) -> Result<Vec<GatewayMember>, StoreError> {
        let now = now_ms();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        sqlx::query("DELETE FROM gateways WHERE heartbeat_at < $1")
            .bind(now.saturating_sub(ms(expire)))
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT id, ssh_address, runner_address, heartbeat_at FROM gateways \
             WHERE heartbeat_at >= $1 ORDER BY started_at, id",
        )
        .bind(now.saturating_sub(ms(fresh)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GatewayMember {
                    id: row::text(r, "id")?,
                    ssh_address: row::text(r, "ssh_address")?,
                    runner_address: row::text(r, "runner_address")?,
                    heartbeat_at_ms: row::int(r, "heartbeat_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Whether the database answers (one round trip).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }
}
