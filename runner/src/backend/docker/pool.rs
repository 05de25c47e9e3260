//! The warm pool: per image, started containers waiting to be claimed, so that a
//! create is a claim plus the new sandbox's identity instead of a container start.
//!
//! A member is made exactly like a cold sandbox (same container config, hardening,
//! own disk, own bridge and firewall chains), under a *slot* id of its own, and
//! its agent waits for an identity (`agent/src/identity.rs`) without listening. A
//! claim takes a member out of the pool under a lock (so no member is handed out
//! twice), records the sandbox ⇄ slot mapping in the runner's private markers,
//! renames the container `warren-<id>`, sets its limits, writes the identity into
//! its run directory and waits for the agent, as a cold create does. A filler task
//! keeps each pool at its size and removes members whose image changed (the image id
//! behind the tag). Members are never listed, reaped for idleness or adopted.
//!
//! Private markers (`<run dir>/.runner/…`, never mounted):
//! - `<slot>/pool`: a member (its image id);
//! - `<sandbox>/slot`, `<sandbox>/identity`: a claimed sandbox's slot and identity
//!   (sandbox id, token key, env), given again to the agent at each start;
//! - `<slot>/claimed`: the sandbox that claimed it, written last: a claim a crash
//!   interrupted leaves a member that the next start removes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bollard::models::ContainerUpdateBody;
use bollard::query_parameters::RenameContainerOptions;
use serde::{Deserialize, Serialize};

use super::*;

/// The identity file in a member's run directory (the agent's
/// `WARREN_IDENTITY_FILE`).
pub const IDENTITY: &str = "identity";
const POOL_MARKER: &str = "pool";
const SLOT_MARKER: &str = "slot";
pub(super) const SPARE_MARKER: &str = "spare";
pub(super) const CLAIMED_MARKER: &str = "claimed";
const IDENTITY_MARKER: &str = "identity";
/// A filler that failed waits this long before it tries again.
pub(super) const FILL_RETRY: Duration = Duration::from_secs(5);

/// How many started sandboxes of `image` to keep waiting (`--pool IMAGE=N`, or
/// `IMAGE=MIN..MAX` for a pool that follows demand between the two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSize {
    pub image: String,
    /// Kept waiting even when nobody creates.
    pub min: usize,
    /// The most kept waiting, however busy the runner is.
    pub max: usize,
}

impl PoolSize {
    /// A pool of always `size` members.
    pub fn fixed(image: &str, size: usize) -> PoolSize {
        PoolSize {
            image: image.to_owned(),
            min: size,
            max: size,
        }
    }
}

impl std::str::FromStr for PoolSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (image, size) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not IMAGE=N or IMAGE=MIN..MAX"))?;
        let number = |n: &str| {
            n.parse::<usize>()
                .map_err(|_| format!("{n:?} in {s:?} is not a number"))
        };
        let (min, max) = match size.split_once("..") {
            Some((min, max)) => (number(min)?, number(max)?),
            None => (number(size)?, number(size)?),
        };
        if min > max {
            return Err(format!(
                "{s:?}: the minimum {min} is above the maximum {max}"
            ));
        }
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(format!("{image:?} is not an image reference"));
        }
        Ok(PoolSize {
            image: image.to_owned(),
            min,
            max,
        })
    }
}

/// How many members a pool wants now: its minimum, plus one per create that asked
/// for its image within the demand window (claimed or not), up to its maximum.
/// The minimum stays ahead of a burst (creates one after another find a member
/// while the ones they took are being replaced); when creates stop, the pool
/// shrinks back to its minimum one window later.
pub(super) fn wanted(size: &PoolSize, recent_creates: usize) -> usize {
    size.min
        .saturating_add(recent_creates)
        .min(size.max)
        .max(size.min)
}

/// What a claim tells the agent (the JSON `agent/src/identity.rs` reads).
#[derive(Serialize, Deserialize)]
struct Identity {
    sandbox_id: String,
    token_key: String,
    env: BTreeMap<String, Secret>,
}

/// What a create got from the pool.
pub(super) enum Claim<'a> {
    /// The sandbox is made, from a member.
    Claimed,
    /// None fits: the caller creates it cold, holding this (if counted) meanwhile.
    Cold(Option<burst::Counted<'a>>),
}

/// A started member, ready to be claimed.
struct Member {
    slot: SandboxId,
    /// The engine's id of its container (its name changes at claim).
    container: String,
    /// Where it runs, for its new hostname.
    host: Option<hostname::Host>,
    /// The pool (image reference) it belongs to.
    image: String,
    /// The id of the image it runs.
    image_id: String,
}

/// The most creates remembered for the pools' demand (a flood of creates must not
/// grow the runner's memory).
const DEMAND_MEMORY: usize = 4096;

/// The pools' sizes and their ready members.
pub(super) struct Pool {
    sizes: Vec<PoolSize>,
    ready: std::sync::Mutex<Vec<Member>>,
    /// When poolable creates asked for which image id, newest last.
    demand: std::sync::Mutex<std::collections::VecDeque<(Instant, String)>>,
    /// How many members each pool (by image reference) wants now.
    wanted: std::sync::Mutex<HashMap<String, usize>>,
    /// Wakes the filler after a claim.
    wake: tokio::sync::Notify,
    /// Members in the making, creates waiting for them, cold creates.
    burst: burst::Burst,
    closed: AtomicBool,
}

impl Pool {
    pub(super) fn new(sizes: &[PoolSize]) -> Pool {
        Pool {
            sizes: sizes.iter().filter(|s| s.max > 0).cloned().collect(),
            ready: std::sync::Mutex::default(),
            demand: std::sync::Mutex::default(),
            wanted: std::sync::Mutex::new(sizes.iter().map(|s| (s.image.clone(), s.min)).collect()),
            wake: tokio::sync::Notify::new(),
            burst: burst::Burst::default(),
            closed: AtomicBool::new(false),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one member running `image_id` out of the pool: once taken, no other
    /// claim can see it.
    fn take(&self, image_id: &str) -> Option<Member> {
        let mut ready = self.ready();
        let at = ready.iter().position(|m| m.image_id == image_id)?;
        Some(ready.remove(at))
    }

    fn count(&self, image: &str) -> usize {
        self.ready().iter().filter(|m| m.image == image).count()
    }

    /// Remembers that a create asked for `image_id` now.
    fn note_demand(&self, image_id: &str) {
        let mut demand = self
            .demand
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if demand.len() >= DEMAND_MEMORY {
            demand.pop_front();
        }
        demand.push_back((Instant::now(), image_id.to_owned()));
    }

    /// How many creates asked for `image_id` within `window`; forgets older ones.
    fn recent_demand(&self, image_id: &str, window: Duration) -> usize {
        let mut demand = self
            .demand
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while demand.front().is_some_and(|(at, _)| at.elapsed() > window) {
            demand.pop_front();
        }
        demand.iter().filter(|(_, id)| id == image_id).count()
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.wanted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes out the members of `image` beyond `keep` (the newest stay).
    fn take_surplus(&self, image: &str, keep: usize) -> Vec<Member> {
        let mut ready = self.ready();
        let mut kept = 0;
        let (kept_members, surplus): (Vec<Member>, Vec<Member>) = std::mem::take(&mut *ready)
            .into_iter()
            .rev()
            .partition(|m| {
                if m.image != image {
                    return true;
                }
                kept += 1;
                kept <= keep
            });
        *ready = kept_members.into_iter().rev().collect();
        surplus
    }

    /// Takes out the members of `image` that do not run `image_id`.
    fn take_stale(&self, image: &str, image_id: Option<&str>) -> Vec<Member> {
        let mut ready = self.ready();
        let (stale, kept) = std::mem::take(&mut *ready)
            .into_iter()
            .partition(|m| m.image == image && Some(m.image_id.as_str()) != image_id);
        *ready = kept;
        stale
    }
}

impl DockerBackend {
    /// The slot whose container and run directory the sandbox has: its pool
    /// member's, or its own.
    pub(super) fn slot_of(&self, id: &SandboxId) -> SandboxId {
        self.marked_slot(id, SLOT_MARKER)
            .unwrap_or_else(|| id.clone())
    }

    /// The slot whose disk, network and firewall rules the sandbox has: a
    /// spare's, its pool member's, or its own.
    pub(super) fn objects_slot(&self, id: &SandboxId) -> SandboxId {
        self.marked_slot(id, SPARE_MARKER)
            .unwrap_or_else(|| self.slot_of(id))
    }

    fn marked_slot(&self, id: &SandboxId, marker: &str) -> Option<SandboxId> {
        fs::read_to_string(self.private_dir(id).join(marker))
            .ok()
            .and_then(|s| SandboxId::parse(s.trim()).ok())
    }

    /// The sandbox that claimed `slot`, if a claim finished.
    fn claimed_by(&self, slot: &SandboxId) -> Option<SandboxId> {
        let text = fs::read_to_string(self.private_dir(slot).join(CLAIMED_MARKER)).ok()?;
        let id = SandboxId::parse(text.trim()).ok()?;
        (self.objects_slot(&id) == *slot).then_some(id)
    }

    /// The sandbox a Docker object belongs to, from its labels: `None` for another
    /// runner's objects and for pool members nobody claimed.
    pub(super) fn sandbox_of(&self, labels: Option<&HashMap<String, String>>) -> Option<SandboxId> {
        let labels = labels?;
        let labelled = SandboxId::parse(labels.get(LABEL_SANDBOX)?).ok()?;
        // A snapshot's image carries the label emptied (see `snapshot`).
        if labels.get(LABEL_POOL).is_some_and(|v| !v.is_empty()) {
            self.claimed_by(&labelled)
        } else {
            Some(labelled)
        }
    }

    /// A pool member nobody claimed, from an object's labels.
    pub(super) fn unclaimed_member(
        &self,
        labels: Option<&HashMap<String, String>>,
    ) -> Option<SandboxId> {
        let labels = labels?;
        labels.get(LABEL_POOL).filter(|v| !v.is_empty())?;
        let slot = SandboxId::parse(labels.get(LABEL_SANDBOX)?).ok()?;
        self.claimed_by(&slot).is_none().then_some(slot)
    }

    /// What the pools hold back from the capacity the runner reports: the memory
    /// limits of the members they want now and their number. Not their disks: a
    /// waiting member's is an empty sparse file, and a claimed one is counted by
    /// the gateway as any sandbox's quota.
    pub fn pool_reserve(&self) -> (u64, u32) {
        let members: usize = self.pool.wanted().values().sum();
        let members = u32::try_from(members).unwrap_or(u32::MAX);
        (
            u64::from(members).saturating_mul(self.defaults.memory_mb),
            members,
        )
    }

    /// Whether a member (made with the runner's defaults) can serve `spec`: what a
    /// running container cannot change must be the default (its disk too: another
    /// quota is a cold create). Memory, CPUs and pids are set at claim; the image is
    /// matched by id at claim.
    fn poolable(&self, spec: &SandboxSpec) -> bool {
        !self.pool.sizes.is_empty()
            && spec.network == NetworkPolicy::All
            && !spec.read_only_root
            // A pool member's agent has chosen its user and workdir already.
            && spec.user.is_none()
            && spec.workdir.is_none()
            && self.disk_mb(spec) == self.defaults.disk_mb
            && spec
                .idle_timeout_s
                .is_none_or(|s| s == self.defaults.idle_timeout.as_secs())
    }

    /// Makes `id` from a pool member if one fits: one ready, or one in the making
    /// (see [`burst`]); else the caller creates it cold, holding the returned
    /// [`Claim::Cold`] meanwhile. A claim that fails part-way removes the member
    /// and leaves the create to the cold path.
    pub(super) async fn claim(
        &self,
        id: &SandboxId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> crate::Result<Claim<'_>> {
        if !self.poolable(spec) {
            return Ok(Claim::Cold(None));
        }
        let Some(image_id) = self.image_info(spec).await?.id else {
            return Ok(Claim::Cold(None));
        };
        self.pool.note_demand(&image_id);
        let member = match self.pool.take(&image_id) {
            Some(member) => member,
            None => {
                self.pool.wake.notify_one();
                match self.pool.await_member(&image_id).await {
                    Some(member) => member,
                    None => return Ok(Claim::Cold(Some(self.pool.cold_create(&image_id)))),
                }
            }
        };
        let handed = self
            .hand_over(id, &member, token_key, authorized_keys, spec)
            .await;
        self.pool.wake.notify_one();
        if let Err(e) = handed {
            tracing::warn!(sandbox = %id, error = %format!("{e:#}"), "a pool claim failed; creating it cold");
            self.remove_all(id).await?;
            self.remove_all(&member.slot).await?;
            return Ok(Claim::Cold(Some(self.pool.cold_create(&image_id))));
        }
        tracing::info!(sandbox = %id, slot = %member.slot, "sandbox claimed from the pool");
        // As in a cold create: a clone that fails fails the create.
        if let Some(repo) = &spec.repo
            && let Err(e) = self.clone_repo(id, repo).await
        {
            self.remove_all(id).await?;
            return Err(e.into());
        }
        Ok(Claim::Claimed)
    }

    /// Turns `member` into sandbox `id`.
    async fn hand_over(
        &self,
        id: &SandboxId,
        member: &Member,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> Result<()> {
        let slot = &member.slot;
        let identity = serde_json::to_vec(&Identity {
            sandbox_id: id.as_str().to_owned(),
            token_key: token_key.to_owned(),
            env: spec.env.clone(),
        })?;
        self.mark(id, SLOT_MARKER, slot.as_str().as_bytes())?;
        self.mark(id, IDENTITY_MARKER, &identity)?;
        self.mark(slot, CLAIMED_MARKER, id.as_str().as_bytes())?;
        let dir = self.sandbox_run_dir(id);
        crate::backend::write_authorized_keys(&dir, authorized_keys)?;
        write_file(&dir.join(IDENTITY), &identity)?;
        let rename = async {
            self.docker
                .rename_container(
                    &member.container,
                    RenameContainerOptions {
                        name: container_name(id),
                    },
                )
                .await
                .context("renaming the pool member")
        };
        let host = async {
            match member.host.clone() {
                Some(host) => hostname::rename(host, slot.as_str(), id.as_str()).await,
                None => Ok(()),
            }
        };
        let began = Instant::now();
        tokio::try_join!(rename, self.set_limits(&member.container, spec), host)?;
        let renamed = began.elapsed();
        self.wait_for_agent(id).await?;
        // Where a claim's time goes, for whoever tunes it.
        tracing::debug!(
            sandbox = %id,
            renamed_ms = renamed.as_millis(),
            ready_ms = began.elapsed().as_millis(),
            "handed over"
        );
        Ok(())
    }

    /// Gives the member `spec`'s memory, CPU and pids limits where they are not
    /// the defaults it was made with.
    async fn set_limits(&self, container: &str, spec: &SandboxSpec) -> Result<()> {
        let wanted = self.limits(spec);
        if wanted == self.limits(&SandboxSpec::default()) {
            return Ok(());
        }
        let (memory, nano_cpus, pids) = wanted;
        self.docker
            .update_container(
                container,
                ContainerUpdateBody {
                    memory: Some(memory),
                    memory_swap: Some(memory),
                    nano_cpus: Some(nano_cpus),
                    pids_limit: Some(pids),
                    ..Default::default()
                },
            )
            .await
            .context("setting the pool member's limits")
    }

    /// Records that sandbox `id` has the disk, network and rules of `slot` (a
    /// spare's); its container and run directory are its own.
    pub(super) fn bind_spare(&self, id: &SandboxId, slot: &SandboxId) -> Result<()> {
        self.mark(id, SPARE_MARKER, slot.as_str().as_bytes())?;
        self.mark(slot, CLAIMED_MARKER, id.as_str().as_bytes())
    }

    /// After a claimed sandbox's container started again (Docker gave it its slot's
    /// hostname back): its own hostname.
    pub(super) async fn restore_hostname(&self, id: &SandboxId) -> Result<()> {
        let slot = self.slot_of(id);
        if slot == *id {
            return Ok(());
        }
        let info = self
            .docker
            .inspect_container(&container_name(id), None)
            .await?;
        match hostname::Host::of(&info) {
            Some(host) => hostname::rename(host, slot.as_str(), id.as_str()).await,
            None => Ok(()),
        }
    }

    /// Before a claimed sandbox's container starts again: its identity, from the
    /// runner's own copy (whatever the container left in its run directory).
    pub(super) fn reissue_identity(&self, id: &SandboxId) -> Result<()> {
        match fs::read(self.private_dir(id).join(IDENTITY_MARKER)) {
            Ok(identity) => write_file(&self.sandbox_run_dir(id).join(IDENTITY), &identity),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("reading a claimed sandbox's identity"),
        }
    }

    /// A claimed sandbox's create-time env (the container's config has none).
    pub(super) fn claimed_env(&self, id: &SandboxId) -> Result<Option<BTreeMap<String, Secret>>> {
        match fs::read(self.private_dir(id).join(IDENTITY_MARKER)) {
            Ok(bytes) => {
                let identity: Identity = serde_json::from_slice(&bytes)
                    .context("reading a claimed sandbox's identity")?;
                Ok(Some(identity.env))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading a claimed sandbox's identity"),
        }
    }

    /// Makes one member of the pool of `image`.
    async fn fill_one(&self, image: &str) -> Result<Member> {
        let slot = SandboxId::generate();
        let spec = SandboxSpec {
            image: Some(image.to_owned()),
            ..SandboxSpec::default()
        };
        let name = container_name(&slot);
        let made = async {
            let dir = self.sandbox_run_dir(&slot);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            crate::backend::write_authorized_keys(&dir, &[])?;
            self.mark(&slot, POOL_MARKER, image.as_bytes())?;
            self.make(&slot, Serves::Pool, image, &spec, &name).await?;
            // The image the container runs, whatever the tag meant a moment ago.
            let info = self.docker.inspect_container(&name, None).await?;
            let host = hostname::Host::of(&info);
            let ids = info.id.zip(info.image);
            ids.map(|(c, i)| (c, i, host))
                .context("the engine does not say a pool member's container or image")
        }
        .await;
        match made {
            Ok((container, image_id, host)) => Ok(Member {
                slot,
                container,
                host,
                image: image.to_owned(),
                image_id,
            }),
            Err(e) => {
                if let Err(cleanup) = self.remove_all(&slot).await {
                    tracing::warn!(error = %format!("{cleanup:#}"), "cleaning up a failed pool member");
                }
                Err(e)
            }
        }
    }

    /// Keeps every pool at its size, and the spare networks ready, until
    /// [`drain_pool`](Self::drain_pool): refills after claims, and removes members
    /// whose image changed (checked every `pool_check_interval`, and at each claim).
    pub async fn keep_pool_filled(&self) {
        tokio::join!(self.keep_members_ready(), self.keep_spares_ready());
    }

    async fn keep_members_ready(&self) {
        if self.pool.sizes.is_empty() {
            return;
        }
        while !self.pool.closed.load(Ordering::SeqCst) {
            let mut failed = false;
            let mut above_minimum = false;
            for size in &self.pool.sizes {
                let image = &size.image;
                let current = match self.docker.inspect_image(image).await {
                    Ok(info) => info.id,
                    Err(e) => {
                        tracing::warn!(image, error = %e, "the pool's image is not here");
                        None
                    }
                };
                for stale in self.pool.take_stale(image, current.as_deref()) {
                    tracing::info!(image, slot = %stale.slot, "the image changed: removing a pool member");
                    self.remove_member(&stale).await;
                }
                let Some(current) = current else {
                    failed = true;
                    continue;
                };
                let want = self.update_wanted(size, &current);
                for surplus in self.pool.take_surplus(image, want) {
                    tracing::info!(image, slot = %surplus.slot, "demand fell: removing a pool member");
                    self.remove_member(&surplus).await;
                }
                let (filled_ok, want) = self.fill_to_wanted(size, &current, want).await;
                failed |= !filled_ok;
                above_minimum |= want > size.min;
            }
            let mut wait = if failed {
                FILL_RETRY
            } else {
                self.defaults.pool_check_interval
            };
            if above_minimum {
                // Look again soon enough to shrink once demand stops.
                wait = wait.min((self.defaults.pool_demand_window / 2).max(Duration::from_secs(1)));
            }
            tokio::select! {
                () = self.pool.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        // A member made while the pool closed.
        self.drain_pool().await;
    }

    /// Fills the pool of `size.image` up to what it wants, `--pool-fill-parallel`
    /// members in the making at any time: a burst of creates empties the pool faster
    /// than one `docker run` after another refills it, and a member that is ready
    /// early is claimable (and replaced) without waiting for the slowest of a batch.
    /// Returns whether every fill worked, and what the pool wants now (creates that
    /// came meanwhile raise it).
    async fn fill_to_wanted(
        &self,
        size: &PoolSize,
        image_id: &str,
        mut want: usize,
    ) -> (bool, usize) {
        use futures_util::StreamExt;
        let parallel = self.defaults.pool_fill_parallel.max(1);
        let mut making = futures_util::stream::FuturesUnordered::new();
        let mut ok = true;
        loop {
            while ok
                && making.len() < parallel
                && self.pool.count(&size.image) + making.len() < want
                && !self.pool.burst.cold_running(image_id)
                && !self.pool.closed.load(Ordering::SeqCst)
            {
                // Counted from now, so that creates can wait for it.
                let counted = self.pool.making(image_id);
                making.push(async move {
                    let filled = self.fill_and_add(&size.image).await;
                    drop(counted);
                    filled
                });
            }
            let Some(filled) = making.next().await else {
                return (ok, want);
            };
            // After a failure, the ones in the making finish, and no more start
            // until the retry.
            ok &= filled;
            want = self.update_wanted(size, image_id);
        }
    }

    /// How many members the pool of `size.image` (now `image_id`) wants, from
    /// recent demand; recorded for the capacity the runner reports.
    fn update_wanted(&self, size: &PoolSize, image_id: &str) -> usize {
        let recent = self
            .pool
            .recent_demand(image_id, self.defaults.pool_demand_window);
        let want = wanted(size, recent);
        self.pool.wanted().insert(size.image.clone(), want);
        want
    }

    /// Makes one member of `image` and puts it in the pool; `false` if that failed.
    async fn fill_and_add(&self, image: &str) -> bool {
        match self.fill_one(image).await {
            Ok(member) => {
                let slot = member.slot.clone();
                self.pool.ready().push(member);
                // Logged once claimable: tests wait for this line.
                tracing::debug!(image, slot = %slot, "pool member ready");
                true
            }
            Err(e) => {
                tracing::warn!(image, error = %format!("{e:#}"), "could not fill the pool");
                false
            }
        }
    }

    async fn remove_member(&self, member: &Member) {
        if let Err(e) = self.remove_all(&member.slot).await {
            tracing::warn!(slot = %member.slot, error = %format!("{e:#}"), "removing a pool member");
        }
    }

    /// At shutdown: removes every member nobody claimed and every spare nobody took
    /// (they hold nothing of a user's); the fillers stop.
    pub async fn drain_pool(&self) {
        self.drain_spares().await;
        self.pool.closed.store(true, Ordering::SeqCst);
        self.pool.wake.notify_one();
        let members = std::mem::take(&mut *self.pool.ready());
        for member in members {
            self.remove_member(&member).await;
        }
    }
}

#[path = "pool_burst.rs"]
mod burst;

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
