//! What one gateway decided that every gateway on the same database must honour at
//! once: a key revoked or deleted, a share taken back, a sandbox's tokens rotated, a
//! sandbox stopped or deleted, a sandbox row written (the listed pages are stale).
//!
//! For: small typed events ([`TierEvent`]), published by the gateway that made the
//! change ([`Store::publish`]) and delivered to every gateway's subscriber
//! ([`Store::subscribe`]), the publisher's own included. Not for: state (the
//! database has it; an event only says "look again" or "end these logins") or
//! secrets (events carry ids and fingerprints, never a key or a token).
//!
//! # Delivery
//!
//! One code path on both backends: an event goes to this store's own subscribers
//! through an in-process channel at once. On PostgreSQL it also goes out as a
//! `NOTIFY warren_tier` with a versioned JSON payload; each store's listener (a
//! connection of its own, `LISTEN warren_tier`) passes on the other gateways'
//! events, applying their effect on this store's caches first. When the listener
//! loses its connection (PostgreSQL restarted) it connects again, and since events
//! may have been missed meanwhile its subscriber gets [`Delivery::Resync`]: forget
//! every cache, check every live login again. A payload this version cannot read
//! (a newer gateway's event) is a resync too, never ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use warren_keys::SandboxId;

use super::{ApiKeyId, Backend, Store, UserId};

/// The PostgreSQL channel the gateways notify on (for the `public` schema; see
/// [`channel_for`]).
pub const CHANNEL: &str = "warren_tier";
/// The payload's version; a gateway resyncs on any other.
const VERSION: u32 = 1;
/// How long one attempt of the listener to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Events kept for a subscriber that falls behind (it resyncs past that).
const BACKLOG: usize = 4096;

/// A decision every gateway applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierEvent {
    /// An API key was revoked: forget it, end the logins made with it.
    ApiKeyRevoked { key: ApiKeyId },
    /// `user`'s SSH key of `fingerprint` was deleted: end the logins made with it.
    SshKeyDeleted { user: UserId, fingerprint: String },
    /// `sandbox` is no longer shared with `user` (`secrets_only`: still shared, but
    /// without its secrets): end that user's logins to it.
    ShareTaken {
        user: UserId,
        sandbox: SandboxId,
        secrets_only: bool,
    },
    /// `sandbox`'s tokens were rotated: end the token logins to it.
    TokensRevoked { sandbox: SandboxId },
    /// `sandbox` was stopped: end every login to it.
    SandboxStopped { sandbox: SandboxId },
    /// `sandbox` was deleted: end every login to it.
    SandboxDeleted { sandbox: SandboxId },
    /// A sandbox row was written: listed pages are stale.
    SandboxesChanged,
}

/// What a subscriber gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Event(TierEvent),
    /// Events may have been missed (the listener reconnected, the subscriber fell
    /// behind, a payload could not be read): assume anything changed.
    Resync,
}

/// The wire form: ids as text, parsed (and so checked) on arrival.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    v: u32,
    /// The publishing store (random per process), so a listener skips its own.
    origin: String,
    #[serde(flatten)]
    event: WireEvent,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireEvent {
    ApiKeyRevoked {
        key: String,
    },
    SshKeyDeleted {
        user: String,
        fingerprint: String,
    },
    ShareTaken {
        user: String,
        sandbox: String,
        secrets_only: bool,
    },
    TokensRevoked {
        sandbox: String,
    },
    SandboxStopped {
        sandbox: String,
    },
    SandboxDeleted {
        sandbox: String,
    },
    SandboxesChanged,
}

impl TierEvent {
    fn to_wire(&self) -> WireEvent {
        match self.clone() {
            TierEvent::ApiKeyRevoked { key } => WireEvent::ApiKeyRevoked {
                key: key.as_str().to_owned(),
            },
            TierEvent::SshKeyDeleted { user, fingerprint } => WireEvent::SshKeyDeleted {
                user: user.as_str().to_owned(),
                fingerprint,
            },
            TierEvent::ShareTaken {
                user,
                sandbox,
                secrets_only,
            } => WireEvent::ShareTaken {
                user: user.as_str().to_owned(),
                sandbox: sandbox.as_str().to_owned(),
                secrets_only,
            },
            TierEvent::TokensRevoked { sandbox } => WireEvent::TokensRevoked {
                sandbox: sandbox.as_str().to_owned(),
            },
            TierEvent::SandboxStopped { sandbox } => WireEvent::SandboxStopped {
                sandbox: sandbox.as_str().to_owned(),
            },
            TierEvent::SandboxDeleted { sandbox } => WireEvent::SandboxDeleted {
                sandbox: sandbox.as_str().to_owned(),
            },
            TierEvent::SandboxesChanged => WireEvent::SandboxesChanged,
        }
    }

    /// The event a wire form names, if every id in it is well formed.
    fn from_wire(wire: WireEvent) -> Option<TierEvent> {
        let sandbox = |s: &str| SandboxId::parse(s).ok();
        Some(match wire {
            WireEvent::ApiKeyRevoked { key } => TierEvent::ApiKeyRevoked {
                key: ApiKeyId::parse(&key).ok()?,
            },
            WireEvent::SshKeyDeleted { user, fingerprint } => TierEvent::SshKeyDeleted {
                user: UserId::parse(&user).ok()?,
                fingerprint,
            },
            WireEvent::ShareTaken {
                user,
                sandbox: s,
                secrets_only,
            } => TierEvent::ShareTaken {
                user: UserId::parse(&user).ok()?,
                sandbox: sandbox(&s)?,
                secrets_only,
            },
            WireEvent::TokensRevoked { sandbox: s } => TierEvent::TokensRevoked {
                sandbox: sandbox(&s)?,
            },
            WireEvent::SandboxStopped { sandbox: s } => TierEvent::SandboxStopped {
                sandbox: sandbox(&s)?,
            },
            WireEvent::SandboxDeleted { sandbox: s } => TierEvent::SandboxDeleted {
                sandbox: sandbox(&s)?,
            },
            WireEvent::SandboxesChanged => TierEvent::SandboxesChanged,
        })
    }
}

/// Encodes `event` from `origin` as a NOTIFY payload.
fn encode(origin: &str, event: &TierEvent) -> String {
    let wire = Wire {
        v: VERSION,
        origin: origin.to_owned(),
        event: event.to_wire(),
    };
    // A struct of strings and a bool always serializes.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// What a payload says: `None` for this store's own events, a resync for anything
/// unreadable.
fn decode(own_origin: &str, payload: &str) -> Option<Delivery> {
    let Ok(wire) = serde_json::from_str::<Wire>(payload) else {
        return Some(Delivery::Resync);
    };
    if wire.origin == own_origin {
        return None;
    }
    if wire.v != VERSION {
        return Some(Delivery::Resync);
    }
    Some(TierEvent::from_wire(wire.event).map_or(Delivery::Resync, Delivery::Event))
}

/// The channel of the tier whose tables are in `schema`: notifications and advisory
/// locks are per database, so two tiers in one database (tests do this) keep apart.
pub fn channel_for(schema: &str) -> String {
    if schema == "public" {
        CHANNEL.to_owned()
    } else {
        format!("{CHANNEL}_{:08x}", fnv1a(schema.as_bytes()) as u32)
    }
}

/// FNV-1a, 64 bits: a stable hash of a name (channels, lease keys).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A store's side of the event bus: its origin and its in-process channel.
pub(crate) struct Bus {
    origin: String,
    local: broadcast::Sender<TierEvent>,
    /// The PostgreSQL URL the listener connects with (never logged).
    url: Option<String>,
    /// The schema the store's tables are in (PostgreSQL), which names its channel
    /// and its leases.
    schema: String,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// The PostgreSQL URL (for connections outside the pool: listener, leases).
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The schema the store's tables are in ("" on SQLite).
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn new(url: Option<String>, schema: String) -> Bus {
        Bus {
            origin: warren_keys::random_id::<16>("gw-"),
            local: broadcast::channel(BACKLOG).0,
            url,
            schema,
        }
    }
}

/// A gateway's stream of [`Delivery`]s; dropping it stops its listener.
pub struct Subscription {
    local: broadcast::Receiver<TierEvent>,
    remote: Option<mpsc::Receiver<Delivery>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

impl Subscription {
    /// The next delivery (waits for one).
    pub async fn next(&mut self) -> Delivery {
        let remote = async {
            match &mut self.remote {
                Some(remote) => remote.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            local = self.local.recv() => match local {
                Ok(event) => Delivery::Event(event),
                Err(broadcast::error::RecvError::Lagged(_)) => Delivery::Resync,
                // The store holds the sender as long as this receiver's store lives.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
            Some(delivery) = remote => delivery,
        }
    }
}

impl Store {
    /// Tells every gateway on this database (this one at once, the others through
    /// PostgreSQL) about `event`. A failure to notify is logged; the others then
    /// see the change when their caches expire, or at their next resync.
    pub async fn publish(&self, event: TierEvent) {
        let _ = self.bus.local.send(event.clone());
        if self.backend != Backend::Postgres {
            return;
        }
        let payload = encode(&self.bus.origin, &event);
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel_for(&self.bus.schema))
            .bind(payload)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "cannot notify the other gateways");
        }
    }

    /// Every event published from now on: this store's own, and on PostgreSQL the
    /// other gateways' (their cache effects applied to this store first).
    pub fn subscribe(&self) -> Subscription {
        let local = self.bus.local.subscribe();
        let (remote, listener) = match (&self.bus.url, self.backend) {
            (Some(url), Backend::Postgres) => {
                let (tx, rx) = mpsc::channel(BACKLOG);
                let task = tokio::spawn(listen(self.clone(), url.clone(), tx));
                (Some(rx), Some(task))
            }
            _ => (None, None),
        };
        Subscription {
            local,
            remote,
            listener,
        }
    }

    /// Forgets every cached answer (events may have been missed).
    pub fn invalidate_caches(&self) {
        self.api_keys.forget_all();
        self.pages.invalidate();
    }

    /// What `event` changes in this store's caches.
    fn apply_to_caches(&self, event: &TierEvent) {
        match event {
            TierEvent::ApiKeyRevoked { key } => self.api_keys.forget(key),
            TierEvent::SandboxesChanged
            | TierEvent::SandboxStopped { .. }
            | TierEvent::SandboxDeleted { .. } => self.pages.invalidate(),
            TierEvent::SshKeyDeleted { .. }
            | TierEvent::ShareTaken { .. }
            | TierEvent::TokensRevoked { .. } => {}
        }
    }
}

/// The listener: `LISTEN` on a connection of its own, connecting again (and telling
/// the subscriber to resync) whenever it is lost, until the subscription drops.
async fn listen(store: Store, url: String, tx: mpsc::Sender<Delivery>) {
    let channel = channel_for(&store.bus.schema);
    let mut connected_before = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        // Bounded here: sqlx's own connect retries a refused connection for 30 s,
        // with pauses growing to 6 s, which would keep it deaf that long after
        // the server is back.
        let connecting = connect(&url, &channel);
        let mut listener = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(listener)) => listener,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the event listener cannot connect yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                tracing::debug!("the event listener cannot connect yet (timed out)");
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if connected_before {
            tracing::info!("the event listener is connected again; resyncing");
            store.invalidate_caches();
            if tx.send(Delivery::Resync).await.is_err() {
                return;
            }
        }
        connected_before = true;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Some(delivery) = decode(&store.bus.origin, notification.payload()) else {
                        continue;
                    };
                    match &delivery {
                        Delivery::Event(event) => store.apply_to_caches(event),
                        Delivery::Resync => store.invalidate_caches(),
                    }
                    if tx.send(delivery).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("the event listener lost its connection; reconnecting");
                    // Nothing is heard while it is down: trust no cache meanwhile.
                    store.invalidate_caches();
                    break;
                }
            }
        }
    }
}

async fn connect(url: &str, channel: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok(listener)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_wire_and_own_ones_are_skipped() {
        let events = [
            TierEvent::ApiKeyRevoked {
                key: ApiKeyId::generate(),
            },
            TierEvent::SshKeyDeleted {
                user: UserId::generate(),
                fingerprint: "SHA256:abc".into(),
            },
            TierEvent::ShareTaken {
                user: UserId::generate(),
                sandbox: SandboxId::generate(),
                secrets_only: true,
            },
            TierEvent::TokensRevoked {
                sandbox: SandboxId::generate(),
            },
            TierEvent::SandboxStopped {
                sandbox: SandboxId::generate(),
            },
            TierEvent::SandboxDeleted {
                sandbox: SandboxId::generate(),
            },
            TierEvent::SandboxesChanged,
        ];
        for event in events {
            let payload = encode("gw-a", &event);
            assert!(payload.len() < 8000, "NOTIFY payloads stay small");
            assert_eq!(decode("gw-b", &payload), Some(Delivery::Event(event)));
            assert_eq!(decode("gw-a", &payload), None);
        }
    }

    #[test]
    fn each_schema_has_its_channel() {
        assert_eq!(channel_for("public"), "warren_tier");
        assert_ne!(channel_for("t_a"), channel_for("t_b"));
        assert!(channel_for("a_very_long_schema_name_that_goes_on").len() < 63);
    }

    #[test]
    fn unreadable_payloads_resync() {
        for bad in [
            "",
            "not json",
            r#"{"v":2,"origin":"x","kind":"sandboxes_changed"}"#,
            r#"{"v":1,"origin":"x","kind":"something_new"}"#,
            r#"{"v":1,"origin":"x","kind":"api_key_revoked","key":"../etc"}"#,
        ] {
            assert_eq!(decode("gw-a", bad), Some(Delivery::Resync), "{bad}");
        }
    }
}
