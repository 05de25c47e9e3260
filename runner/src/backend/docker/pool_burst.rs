//! A burst of creates against a pool that ran dry.
//!
//! A create that finds no member ready waits for one already in the making (it is
//! further along than a container started now), one waiting create per member in
//! the making; the others start cold at once, in parallel. While cold creates of an
//! image run, its pool starts no new members: on a small host they would only slow
//! down the creates somebody is waiting for, and the pool refills once the burst is
//! served (each cold create that ends wakes the filler, which starts members again
//! once none runs).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Member, Pool};

/// The longest a create waits for a member in the making before it starts cold
/// (a member that takes this long is stuck, not slow).
const MEMBER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Per image id: members in the making, creates waiting for one, cold creates.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    making: usize,
    waiting: usize,
    cold: usize,
}

/// What the pools are doing for creates that found no member ready.
#[derive(Default)]
pub(super) struct Burst {
    counts: Mutex<HashMap<String, Counts>>,
    /// Wakes waiting creates when a member in the making is ready or failed.
    done: tokio::sync::Notify,
}

impl Burst {
    /// Changes the counts of `image_id` (forgotten when all are zero).
    fn update<T>(&self, image_id: &str, change: impl FnOnce(&mut Counts) -> T) -> T {
        let mut counts: MutexGuard<'_, _> =
            self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = counts.entry(image_id.to_owned()).or_default();
        let result = change(entry);
        if *entry == Counts::default() {
            counts.remove(image_id);
        }
        result
    }

    /// Whether cold creates of `image_id` are running (the filler then waits).
    pub(super) fn cold_running(&self, image_id: &str) -> bool {
        self.update(image_id, |c| c.cold > 0)
    }
}

/// What a [`Counted`] counts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A member in the making, until it is ready or failed (or its future dropped).
    Making,
    /// A create waiting for a member in the making.
    Waiting,
    /// A create on the cold path.
    Cold,
}

impl Kind {
    fn count(self, counts: &mut Counts) -> &mut usize {
        match self {
            Kind::Making => &mut counts.making,
            Kind::Waiting => &mut counts.waiting,
            Kind::Cold => &mut counts.cold,
        }
    }
}

/// Counted under its image id until dropped. A member in the making that ends
/// wakes the creates waiting; a cold create that ends wakes the filler.
pub(in crate::backend::docker) struct Counted<'a> {
    pool: &'a Pool,
    image_id: String,
    kind: Kind,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let kind = self.kind;
        self.pool.burst.update(&self.image_id, |c| {
            let n = kind.count(c);
            *n = n.saturating_sub(1);
        });
        match kind {
            Kind::Making => self.pool.burst.done.notify_waiters(),
            Kind::Cold => self.pool.wake.notify_one(),
            Kind::Waiting => {}
        }
    }
}

impl Pool {
    fn counted(&self, image_id: &str, kind: Kind) -> Counted<'_> {
        self.burst.update(image_id, |c| *kind.count(c) += 1);
        Counted {
            pool: self,
            image_id: image_id.to_owned(),
            kind,
        }
    }

    /// Counts a member of `image_id` as in the making (before its future starts).
    pub(super) fn making(&self, image_id: &str) -> Counted<'_> {
        self.counted(image_id, Kind::Making)
    }

    /// Counts a create of `image_id` as cold until the returned value is dropped.
    pub(super) fn cold_create(&self, image_id: &str) -> Counted<'_> {
        self.counted(image_id, Kind::Cold)
    }

    /// For a create that found no member of `image_id` ready: a member in the
    /// making that no other create waits for, once it is ready; `None` (start
    /// cold) when there is none, it failed, or it took too long.
    pub(super) async fn await_member(&self, image_id: &str) -> Option<Member> {
        let deadline = tokio::time::Instant::now() + MEMBER_WAIT;
        let mut waiting: Option<Counted<'_>> = None;
        loop {
            let done = self.burst.done.notified();
            tokio::pin!(done);
            // Registered before looking, so a member finished in between wakes us.
            done.as_mut().enable();
            if let Some(member) = self.take(image_id) {
                return Some(member);
            }
            let wait = if waiting.is_some() {
                // Members failed or went to other creates: the waiters beyond
                // those in the making go cold.
                self.burst.update(image_id, |c| c.making >= c.waiting)
            } else {
                // Looked at and counted at once: two creates never both take the
                // last member in the making.
                let free = self.burst.update(image_id, |c| {
                    let free = c.making > c.waiting;
                    c.waiting += usize::from(free);
                    free
                });
                if free {
                    waiting = Some(Counted {
                        pool: self,
                        image_id: image_id.to_owned(),
                        kind: Kind::Waiting,
                    });
                }
                free
            };
            if !wait {
                return None;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                tracing::warn!(
                    image_id,
                    "no pool member was ready within {MEMBER_WAIT:?}: creating cold"
                );
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::PoolSize;
    use super::*;

    fn member(image_id: &str) -> Member {
        Member {
            slot: super::super::SandboxId::generate(),
            container: "c".into(),
            host: None,
            image: "x".into(),
            image_id: image_id.into(),
        }
    }

    #[tokio::test]
    async fn a_create_waits_for_a_member_in_the_making_and_one_per_member() {
        let pool = Pool::new(&[PoolSize::fixed("x", 1)]);
        // Nothing in the making: cold.
        assert!(pool.await_member("sha").await.is_none());
        let making = pool.making("sha");
        let (first, second, ready) = tokio::join!(
            pool.await_member("sha"),
            // Only one member is in the making: the second create goes cold.
            async {
                tokio::task::yield_now().await;
                pool.await_member("sha").await
            },
            async {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                pool.ready().push(member("sha"));
                drop(making);
            }
        );
        let () = ready;
        assert!(first.is_some());
        assert!(second.is_none());
        assert!(pool.burst.counts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_member_sends_its_waiting_create_cold() {
        let pool = Pool::new(&[PoolSize::fixed("x", 1)]);
        let making = pool.making("sha");
        let (got, ()) = tokio::join!(pool.await_member("sha"), async {
            tokio::task::yield_now().await;
            drop(making);
        });
        assert!(got.is_none());
        assert!(pool.burst.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn cold_creates_hold_the_filler_until_the_last_ends() {
        let pool = Pool::new(&[PoolSize::fixed("x", 1)]);
        let (a, b) = (pool.cold_create("sha"), pool.cold_create("sha"));
        assert!(pool.burst.cold_running("sha"));
        assert!(!pool.burst.cold_running("other"));
        drop(a);
        assert!(pool.burst.cold_running("sha"));
        drop(b);
        assert!(!pool.burst.cold_running("sha"));
    }
}
