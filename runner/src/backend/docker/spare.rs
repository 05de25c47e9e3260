//! Spare networks: a few slots whose bridge network and firewall rules are made
//! ahead, so that a cold create (no pool member fits) starts with its
//! container. Docker takes 80–100 ms here to make a bridge network (a fifth of a cold
//! create), and the network cannot be shared: each sandbox has its own.
//!
//! A spare is a slot as a pool member is (its objects labelled with the slot and
//! [`LABEL_POOL`], here [`SPARE`]), without a container. A create takes one under a
//! lock (never twice) and records in the runner's private markers that the sandbox
//! has the slot's network (and its disk is keyed by the slot) (`<sandbox>/spare`, and `<slot>/claimed` as a
//! claim writes); its container, run directory and hostname are its own, made as a
//! cold create makes them. Spares hold no memory or CPU, so they are not counted
//! against capacity; each holds one /28 of the network pool.
//! A runner start removes the spares nobody took, as it does unclaimed members.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// The [`LABEL_POOL`] value of a spare's objects (a member's is its image).
pub const SPARE: &str = "spare";

/// The spare slots ready to be taken.
pub(super) struct Spares {
    size: usize,
    ready: std::sync::Mutex<Vec<SandboxId>>,
    /// Wakes the filler after a take.
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

impl Spares {
    pub(super) fn new(size: usize) -> Spares {
        Spares {
            size,
            ready: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<SandboxId>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DockerBackend {
    /// Gives sandbox `id` a spare slot if one is ready and the sandbox has a
    /// network of its own; its disk, network and rules are then the slot's.
    /// Before any of them is made.
    pub(super) fn take_spare(&self, id: &SandboxId, spec: &SandboxSpec) -> Result<()> {
        if spec.network == NetworkPolicy::None {
            return Ok(());
        }
        // The filler is woken after the create (`refill_spares`): making a network
        // while the container starts slows both.
        let Some(slot) = self.spares.ready().pop() else {
            return Ok(());
        };
        let bound = self.bind_spare(id, &slot);
        if bound.is_err() {
            self.return_spare(id, &slot);
        } else {
            tracing::debug!(sandbox = %id, slot = %slot, "took a spare network");
        }
        bound
    }

    /// Gives back the spare `id` took and has not used (nothing of `id` is on it).
    pub(super) fn return_spare(&self, id: &SandboxId, slot: &SandboxId) {
        let _ = fs::remove_file(self.private_dir(id).join(pool::SPARE_MARKER));
        let _ = fs::remove_file(self.private_dir(slot).join(pool::CLAIMED_MARKER));
        self.spares.ready().push(slot.clone());
    }

    /// After a create, taken a spare or not: the filler may make the next.
    pub(super) fn refill_spares(&self) {
        self.spares.wake.notify_one();
    }

    /// Makes one spare: its network with the default policy's rules (a create with
    /// another policy puts its own in). Its disk is made by the create that takes
    /// it, of the size it asks for.
    async fn make_spare(&self) -> Result<SandboxId> {
        let slot = SandboxId::generate();
        let mut labels = self.labels(&slot);
        labels.insert(LABEL_POOL.to_owned(), SPARE.to_owned());
        match self.make_network(&slot, &labels, &NetworkPolicy::All).await {
            Ok(()) => Ok(slot),
            Err(e) => {
                if let Err(cleanup) = self.remove_all(&slot).await {
                    tracing::warn!(error = %format!("{cleanup:#}"), "cleaning up a failed spare");
                }
                Err(e)
            }
        }
    }

    /// Keeps `size` spares ready until [`drain_spares`](Self::drain_spares).
    pub(super) async fn keep_spares_ready(&self) {
        while self.spares.size > 0 && !self.spares.closed.load(Ordering::SeqCst) {
            let mut failed = false;
            while self.spares.ready().len() < self.spares.size
                && !self.spares.closed.load(Ordering::SeqCst)
            {
                // Several at once, as the pool fills: a burst of cold creates
                // takes them faster than one after another remakes them.
                let missing = self.spares.size - self.spares.ready().len();
                let batch = missing.min(self.defaults.pool_fill_parallel.max(1));
                let made =
                    futures_util::future::join_all((0..batch).map(|_| self.make_spare())).await;
                for result in made {
                    match result {
                        Ok(slot) => {
                            self.spares.ready().push(slot.clone());
                            // Logged once takeable: tests wait for this line.
                            tracing::debug!(slot = %slot, "spare network ready");
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "could not make a spare network");
                            failed = true;
                        }
                    }
                }
                if failed {
                    break;
                }
            }
            if failed {
                tokio::time::sleep(pool::FILL_RETRY).await;
            } else {
                self.spares.wake.notified().await;
            }
        }
        // A spare made while the runner stopped.
        self.drain_spares().await;
    }

    /// At shutdown: removes the spares nobody took; the filler stops.
    pub(super) async fn drain_spares(&self) {
        self.spares.closed.store(true, Ordering::SeqCst);
        self.spares.wake.notify_one();
        let slots = std::mem::take(&mut *self.spares.ready());
        for slot in slots {
            if let Err(e) = self.remove_all(&slot).await {
                tracing::warn!(slot = %slot, error = %format!("{e:#}"), "removing a spare network");
            }
        }
    }
}
