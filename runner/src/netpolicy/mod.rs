//! Network rules for Docker sandboxes, as iptables (and ip6tables) rules on the
//! runner host.
//!
//! Two chains, shared by every sandbox on the host, in both address families, each
//! jumped to by the first rule of its parent for any sandbox bridge (`wr-+`, see
//! [`bridge_name`]), so a bridge is covered from the moment Docker names it:
//!
//! - [`FORWARD_CHAIN`], from `DOCKER-USER`, for what a sandbox sends through the host
//!   (the internet, other hosts): link-local destinations (169.254.0.0/16, where
//!   clouds and container platforms serve metadata and credentials; fe80::/10 and
//!   fd00:ec2::254 in IPv6) and other sandboxes' bridges are dropped, the rest passes
//!   on to Docker's own rules.
//! - [`HOST_CHAIN`], from `INPUT`, for what a sandbox sends to the host itself (the
//!   bridge's gateway address or any other of the host's addresses): dropped, except
//!   replies.
//!
//! A sandbox with an allow-list ([`NetworkPolicy::Allow`]) or open host ports
//! ([`HostAccess`]) gets a complete chain of its own, reached by a goto from the
//! shared chain, so the shared chain's verdict does not apply to it. Shared, not one
//! jump per sandbox in `INPUT`, because every packet the host receives walks
//! `INPUT`: at 500 sandboxes that walk tripled a loopback round trip
//! (`bench-firewall`).
//!
//! Passing a chain means `RETURN`, never `ACCEPT`: the host's own firewall still
//! applies. Docker's embedded DNS server (127.0.0.11) lives in the container's own
//! network namespace, so dropping `INPUT` leaves name resolution alone.
//!
//! IPv6 rules are installed whenever `ip6tables` works on the host, whether or not the
//! bridge carries IPv6 (Docker's default is not); without it they are skipped.
//! [`rules`] builds the argument lists and what to change given a listing; this
//! module runs them, each change under a host-wide lock ([`HostLock`]): several
//! runners may share a host, and the shared chains are the host's.

mod rules;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use warren_keys::SandboxId;

use crate::protocol::NetworkPolicy;
pub use rules::{
    FORWARD_CHAIN, Family, HOST_CHAIN, HostAccess, LINK_LOCAL_V4, LINK_LOCAL_V6, MARKER,
    METADATA_ADDRESS, METADATA_ADDRESS_V6, bridge_name, forward_chain, host_chain, jump_line,
    sandbox_rules, shared_rules,
};
use rules::{forward_parent, removal, repair, restore_batch};

/// The lock every runner on the host takes to change the rules: a change reads a
/// listing and writes what it lacks, which must not interleave with another's.
const LOCK_PATH: &str = "/run/lock/warren-netpolicy.lock";

/// An exclusive `flock` on [`LOCK_PATH`], held until dropped.
pub struct HostLock {
    _file: std::fs::File,
}

impl HostLock {
    /// Waits for the lock (off the async threads: another runner may hold it for a
    /// few `iptables` runs).
    pub async fn acquire() -> Result<HostLock> {
        tokio::task::spawn_blocking(|| {
            let path = Path::new(LOCK_PATH);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .with_context(|| format!("opening {LOCK_PATH}"))?;
            file.lock()
                .with_context(|| format!("locking {LOCK_PATH}"))?;
            Ok(HostLock { _file: file })
        })
        .await
        .context("the firewall lock's task")?
    }
}

/// Runs `iptables -w ARGS` (or ip6tables); `Ok(None)` on success, `Ok(Some(stderr))`
/// when it ran and failed, `Err` when it could not run.
async fn run(family: Family, args: &[String]) -> Result<Option<String>> {
    let out = Command::new(family.program())
        .arg("-w")
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} (the docker backend needs it)", family.program()))?;
    if out.status.success() {
        Ok(None)
    } else {
        Ok(Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Installs `rules` with one `iptables-restore --noflush` (or ip6tables-restore):
/// one process instead of one per rule, and the kernel takes the whole batch or
/// none of it.
async fn restore(family: Family, rules: &[Vec<String>]) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let program = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let mut child = Command::new(program)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {program} (the docker backend needs it)"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(restore_batch(rules).as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `iptables -S` (or ip6tables), the whole filter table as rules; `None` when it
/// cannot run or fails.
async fn listing(family: Family) -> Option<String> {
    let out = Command::new(family.program())
        .args(["-w", "-S"])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The families to install rules in, each with a fresh listing: IPv4, which must
/// list, and IPv6 where ip6tables lists (installed, and the kernel has IPv6
/// filtering).
async fn listings() -> Result<Vec<(Family, String)>> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let v4 = listing(Family::V4)
        .await
        .context("iptables -S failed (the docker backend needs it)")?;
    let mut out = vec![(Family::V4, v4)];
    match listing(Family::V6).await {
        Some(v6) => out.push((Family::V6, v6)),
        None if !WARNED.swap(true, Ordering::Relaxed) => tracing::warn!(
            "ip6tables is missing or IPv6 is off: sandbox networks get IPv4 rules only \
             (their bridges carry no IPv6 unless Docker is set up for it)"
        ),
        None => {}
    }
    Ok(out)
}

/// Makes or mends the shared chains and their jumps in `family`, given a fresh
/// listing, under the caller's [`HostLock`].
async fn ensure_shared_in(family: Family, listing: &str) -> Result<()> {
    let parent = forward_parent(family, listing);
    let changes = repair(listing, family, parent);
    if !changes.is_empty() {
        tracing::info!(
            family = family.program(),
            "making or mending the shared sandbox chains ({} changes)",
            changes.len()
        );
        restore(family, &changes).await?;
    }
    Ok(())
}

/// Makes or mends the shared chains and their jumps, IPv4 and IPv6: at the Docker
/// backend's start, so every `wr-+` bridge is covered before any sandbox exists.
pub async fn ensure_shared() -> Result<()> {
    let _lock = HostLock::acquire().await?;
    for (family, listing) in listings().await? {
        ensure_shared_in(family, &listing).await?;
    }
    Ok(())
}

/// Installs the sandbox's rules (replacing any left from before): mends the shared
/// chains if a listing shows them changed, and for an allow-list or open host ports
/// installs the sandbox's own chains, one batch per family. On failure, removes
/// what it installed.
pub async fn apply(id: &SandboxId, policy: &NetworkPolicy, host: &HostAccess) -> Result<()> {
    // Made (and so checked) before anything changes.
    let own_v4 = sandbox_rules(id, policy, host, Family::V4)?;
    let own_v6 = sandbox_rules(id, policy, host, Family::V6)?;
    let _lock = HostLock::acquire().await?;
    let installed = async {
        for (family, mut listing) in listings().await? {
            if remove_in(id, family, &listing).await {
                listing = listing_or_empty(family).await;
            }
            ensure_shared_in(family, &listing).await?;
            let own = match family {
                Family::V4 => &own_v4,
                Family::V6 => &own_v6,
            };
            if !own.is_empty() {
                restore(family, own).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    if installed.is_err() {
        for family in [Family::V4, Family::V6] {
            let listing = listing_or_empty(family).await;
            remove_in(id, family, &listing).await;
        }
    }
    installed
}

async fn listing_or_empty(family: Family) -> String {
    listing(family).await.unwrap_or_default()
}

/// Removes the sandbox's own rules in `family` given a listing, one command at a
/// time (a chain cannot be deleted in the batch that deletes the rule leading to
/// it); whether there was anything to remove.
async fn remove_in(id: &SandboxId, family: Family, listing: &str) -> bool {
    let commands = removal(id, listing);
    for args in &commands {
        if let Ok(Some(stderr)) = run(family, args).await {
            tracing::warn!(sandbox = %id, %stderr, "{} {}", family.program(), args.join(" "));
        }
    }
    !commands.is_empty()
}

/// Removes the sandbox's own rules, IPv4 and IPv6; a no-op when it has none. The
/// shared chains stay.
pub async fn remove(id: &SandboxId) {
    let _lock = match HostLock::acquire().await {
        Ok(lock) => Some(lock),
        Err(e) => {
            tracing::warn!(sandbox = %id, "removing firewall rules without the lock: {e:#}");
            None
        }
    };
    for family in [Family::V4, Family::V6] {
        if let Some(listing) = listing(family).await {
            remove_in(id, family, &listing).await;
        }
    }
}
