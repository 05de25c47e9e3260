//! A short-lived memory of recently verified API keys, so that an API request does
//! not cost a database round trip (a join, through the pool's worker threads) just to
//! learn who is asking.
//!
//! For: [`Store::find_user_by_api_key`](super::Store::find_user_by_api_key) only.
//! Entries are keyed by the SHA-256 of the presented secret (never the secret), live
//! [`TTL`], and revoking a key through this store forgets it at once. Another
//! gateway's revocation arrives as an event (`events`: `ApiKeyRevoked`), which
//! forgets it here too; while the event listener is disconnected every key is
//! forgotten, and [`TTL`] bounds what a lost notification could cost. Unknown keys
//! are not remembered: the failure limiter deals with those.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ApiKeyId;
use super::model::ApiKeyOwner;

/// How long a verified key is believed without asking the database again.
pub const TTL: Duration = Duration::from_secs(5);
/// Beyond this many keys the memory starts over (a flood of distinct valid keys is
/// not a thing; this only bounds memory).
const MAX_ENTRIES: usize = 10_000;

type Digest = [u8; 32];

struct Entry {
    owner: ApiKeyOwner,
    /// The key's `last_used_at` as last written or read (unix seconds).
    last_used: Option<i64>,
    verified_at: Instant,
}

/// What the cache knows about a presented secret.
pub struct Hit {
    pub owner: ApiKeyOwner,
    pub last_used: Option<i64>,
}

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_digest: HashMap<Digest, Entry>,
    /// Bumped by every revocation, so that a lookup that read the database before a
    /// revocation cannot store its (now stale) answer after it.
    generation: u64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

fn digest(secret: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl KeyCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave a half-written entry behind.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The owner of `secret` if it was verified less than [`TTL`] ago.
    pub fn get(&self, secret: &str) -> Option<Hit> {
        let key = digest(secret);
        let entries = &mut self.entries().by_digest;
        let entry = entries.get(&key)?;
        if entry.verified_at.elapsed() >= TTL {
            entries.remove(&key);
            return None;
        }
        Some(Hit {
            owner: entry.owner.clone(),
            last_used: entry.last_used,
        })
    }

    /// Where revocations stand; pass it to [`KeyCache::put`] after reading the
    /// database.
    pub fn generation(&self) -> u64 {
        self.entries().generation
    }

    /// Remembers that `secret` is `owner`'s unrevoked key, as read from the database
    /// when revocations stood at `generation` (nothing is stored if a key was revoked
    /// since).
    pub fn put(&self, secret: &str, owner: &ApiKeyOwner, last_used: Option<i64>, generation: u64) {
        let mut guard = self.entries();
        if guard.generation != generation {
            return;
        }
        let entries = &mut guard.by_digest;
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            digest(secret),
            Entry {
                owner: owner.clone(),
                last_used,
                verified_at: Instant::now(),
            },
        );
    }

    /// Records a `last_used_at` write for `secret`, if it is remembered.
    pub fn used(&self, secret: &str, at: i64) {
        if let Some(entry) = self.entries().by_digest.get_mut(&digest(secret)) {
            entry.last_used = Some(at);
        }
    }

    /// Forgets every key (revocations may have been missed).
    pub fn forget_all(&self) {
        let mut guard = self.entries();
        guard.generation += 1;
        guard.by_digest.clear();
    }

    /// Forgets `key` (it is being revoked), and keeps answers read before now out.
    pub fn forget(&self, key: &ApiKeyId) {
        let mut guard = self.entries();
        guard.generation += 1;
        guard.by_digest.retain(|_, e| &e.owner.key_id != key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Timestamp, User, UserId};

    fn owner() -> ApiKeyOwner {
        ApiKeyOwner {
            user: User {
                id: UserId::generate(),
                name: "alice".into(),
                is_admin: false,
                created_at: Timestamp::now(),
            },
            key_id: ApiKeyId::generate(),
        }
    }

    #[test]
    fn remembers_until_revoked() {
        let cache = KeyCache::default();
        let alice = owner();
        cache.put("wk_a", &alice, None, cache.generation());
        assert_eq!(cache.get("wk_a").unwrap().owner, alice);
        assert!(cache.get("wk_b").is_none());
        cache.forget(&alice.key_id);
        assert!(cache.get("wk_a").is_none());
    }

    #[test]
    fn an_answer_read_before_a_revocation_is_not_stored() {
        let cache = KeyCache::default();
        let alice = owner();
        let before = cache.generation();
        cache.forget(&alice.key_id);
        cache.put("wk_a", &alice, None, before);
        assert!(cache.get("wk_a").is_none());
    }
}
