//! Each sandbox's disk quota (`disk_mb`). Docker here cannot bound a container's
//! writable layer (`--storage-opt size` needs overlay2 on xfs with project quotas;
//! fuse-overlayfs on ext4 has none), so the quota is held in two ways:
//!
//! - **A file system of the quota's size**: a sparse file holding ext4, loop-mounted
//!   on the runner host while the sandbox runs; its directories are the container's
//!   `/workspace`, `/tmp` and `/var/tmp` (sticky, 1777). Writes there beyond it fail
//!   with ENOSPC, for the sandbox user and container root alike (no reserved
//!   blocks). The file system's root is never mounted into the container.
//! - **Measured, for the rest**: every [`WATCH_EVERY`] the watcher adds what the disk
//!   holds to what the container wrote elsewhere (its writable layer, walked on the
//!   host, each entry counted as at least a block, its run directory, and the
//!   deleted files its processes still hold open or mapped: see [`held`]) and kills
//!   a sandbox over its quota, stopped with reason [`DISK_QUOTA`]. A sandbox that
//!   cannot be measured counts as over.
//!
//! Files, per objects slot (as the workspace volume was): `<run dir>/.disks/<slot>.img`
//! (the image: a plain file, so a snapshot can copy it while it is unmounted) and
//! `<run dir>/.disks/<slot>/` (its mount point). A stopped sandbox holds no mount and
//! no loop device (mounts are made at start with `mount -o loop`, whose loop device
//! goes with the mount); a runner start mounts what runs, unmounts what does not and
//! removes the disks of sandboxes that are gone.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::process::Command;

use super::*;

mod measure;

pub(super) use measure::Layer;

/// The directory beside the run directories that holds the disks (sandbox ids
/// cannot start with a dot).
const DISKS_DIR: &str = ".disks";
/// The reason a sandbox over its quota is stopped with.
pub const DISK_QUOTA: &str = "disk_quota";
/// How often running sandboxes are measured.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Each entry of a writable layer counts as at least this much (an inode and a
/// directory entry on the host), so a flood of empty files is bounded too.
const MIN_ENTRY: u64 = 4096;
/// How many volumes (`VOLUME`) an image may declare.
const MAX_VOLUMES: usize = 32;
/// The disk's directory holding the image's volumes, one directory each.
const VOLUMES_DIR: &str = "volumes";
/// The disk's directories mounted into the container, and their modes.
const DISK_DIRS: [(&str, &str, u32); 3] = [
    ("workspace", WORKSPACE, 0o755),
    ("tmp", "/tmp", 0o1777),
    ("var-tmp", "/var/tmp", 0o1777),
];

/// Runs a system tool, failing with its stderr.
pub(super) async fn run(program: &str, args: &[&OsStr]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program} (util-linux and e2fsprogs are needed)"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `path` is a mount point in this mount namespace (the Docker engine's: the
/// runner runs beside it on the host).
pub(super) fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape_mountinfo(m)) == path)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(size, free, available to non-root)` of the file system at `path`, in bytes.
fn statvfs(path: &Path) -> io::Result<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` is a valid buffer for one statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    let block = st.f_frsize;
    Ok((
        st.f_blocks.saturating_mul(block),
        st.f_bfree.saturating_mul(block),
        st.f_bavail.saturating_mul(block),
    ))
}

/// Makes the directory `path` (0700), unless it is there.
pub(super) fn private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .or_else(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .with_context(|| format!("creating {}", path.display()))
}

/// The names of the image volumes of `slot` start so.
fn image_volume_prefix(slot: &SandboxId) -> String {
    format!("warren-{}-volume-", slot.as_str())
}

/// The volumes an image declares that need a mount of their own: absolute, not
/// one of the container's other mounts, each once, at most [`MAX_VOLUMES`].
pub(super) fn image_volumes(declared: Option<&Vec<String>>) -> crate::Result<Vec<String>> {
    let taken: Vec<&str> = DISK_DIRS
        .iter()
        .map(|(_, target, _)| *target)
        .chain([RUN_MOUNT, AGENT_MOUNT, ASKPASS_MOUNT])
        .collect();
    let mut paths: Vec<String> = declared
        .into_iter()
        .flatten()
        .map(|p| p.trim_end_matches('/').to_owned())
        .filter(|p| p.starts_with('/') && !taken.contains(&p.as_str()))
        .collect();
    paths.sort();
    paths.dedup();
    if paths.len() > MAX_VOLUMES {
        return Err(crate::Error::refused(
            "image_not_found",
            format!(
                "the image declares {} volumes; a sandbox's image may declare at most {MAX_VOLUMES}",
                paths.len()
            ),
        ));
    }
    Ok(paths)
}

/// Whether the tools the disks need are here: checked at start, so a runner
/// without them says so at once rather than at the first create.
pub(super) async fn check_tools() -> Result<()> {
    for (tool, arg, package) in [
        ("mkfs.ext4", "-V", "e2fsprogs"),
        ("losetup", "--version", "util-linux"),
        ("mount", "--version", "mount"),
    ] {
        run(tool, &[OsStr::new(arg)]).await.with_context(|| {
            format!("the docker backend needs {tool} ({package}) for the sandboxes' disks")
        })?;
    }
    Ok(())
}

impl DockerBackend {
    pub(super) fn disks_dir(&self) -> PathBuf {
        self.run_dir.join(DISKS_DIR)
    }

    pub(super) fn disk_image(&self, slot: &SandboxId) -> PathBuf {
        self.disks_dir().join(format!("{}.img", slot.as_str()))
    }

    pub(super) fn disk_mount(&self, slot: &SandboxId) -> PathBuf {
        self.disks_dir().join(slot.as_str())
    }

    /// The quota of a sandbox whose spec names none, in MiB.
    pub fn default_disk_mb(&self) -> u64 {
        self.defaults.disk_mb
    }

    /// The quota of a sandbox of `spec`, in MiB.
    pub(super) fn disk_mb(&self, spec: &SandboxSpec) -> u64 {
        spec.disk_mb.unwrap_or(self.defaults.disk_mb)
    }

    /// The container's mounts from the disk of `slot`.
    pub(super) fn disk_mounts(&self, slot: &SandboxId) -> Vec<Mount> {
        let root = self.disk_mount(slot);
        DISK_DIRS
            .iter()
            .map(|(dir, target, _)| Mount {
                target: Some((*target).into()),
                source: Some(root.join(dir).display().to_string()),
                typ: Some(MountType::BIND),
                ..Default::default()
            })
            .collect()
    }

    /// The container's mounts for the volumes its image declares (`VOLUME`): each a
    /// named volume bound to a directory of the disk of `slot`, so what is written
    /// there is under the quota (an anonymous volume would be on the host's disk,
    /// unmeasured). The engine copies the image's contents, owner and mode into
    /// each, as it does for anonymous ones. Makes the directories.
    pub(super) fn volume_mounts(
        &self,
        slot: &SandboxId,
        paths: &[String],
        labels: &HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let dir = self.disk_mount(slot).join(VOLUMES_DIR);
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        private_dir(&dir)?;
        let mut mounts = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let source = dir.join(i.to_string());
            match fs::create_dir(&source) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", source.display()));
                }
            }
            let options = HashMap::from([
                ("type".to_owned(), "none".to_owned()),
                ("o".to_owned(), "bind".to_owned()),
                ("device".to_owned(), source.display().to_string()),
            ]);
            mounts.push(Mount {
                target: Some(path.clone()),
                source: Some(format!("{}{i}", image_volume_prefix(slot))),
                typ: Some(MountType::VOLUME),
                volume_options: Some(bollard::models::MountVolumeOptions {
                    no_copy: Some(false),
                    labels: Some(labels.clone()),
                    driver_config: Some(bollard::models::MountVolumeOptionsDriverConfig {
                        name: Some("local".into()),
                        options: Some(options),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        Ok(mounts)
    }

    /// Removes the named volumes of the image volumes of `slot` (their contents
    /// are on its disk).
    async fn remove_image_volumes(&self, slot: &SandboxId) -> Result<()> {
        let prefix = image_volume_prefix(slot);
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(HashMap::from([("name".to_owned(), vec![prefix.clone()])])),
            }))
            .await
            .context("listing a sandbox's volumes")?;
        for volume in listed.volumes.unwrap_or_default() {
            if !volume.name.starts_with(&prefix) {
                continue;
            }
            match self
                .docker
                .remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true }))
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e).context("removing a sandbox's volume"),
            }
        }
        Ok(())
    }

    /// Makes and mounts the disk of `slot`: a sparse image of `mb` MiB with an empty
    /// ext4 file system and the container's directories.
    pub(super) async fn make_disk(&self, slot: &SandboxId, mb: u64) -> Result<()> {
        self.format_disk(slot, mb).await?;
        self.mount_disk(slot).await?;
        let root = self.disk_mount(slot);
        for (name, _, mode) in DISK_DIRS {
            let path = root.join(name);
            fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        let lost = root.join("lost+found");
        let _ = fs::remove_dir(lost);
        Ok(())
    }

    /// Makes the image of the disk of `slot`: a sparse file of `mb` MiB with an
    /// empty ext4 file system.
    pub(super) async fn format_disk(&self, slot: &SandboxId, mb: u64) -> Result<()> {
        let dir = self.disks_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let image = self.disk_image(slot);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&image)
            .with_context(|| format!("creating {}", image.display()))?;
        file.set_len(mb.saturating_mul(1 << 20))
            .context("sizing the sandbox's disk")?;
        drop(file);
        // No blocks reserved for root (container root gets no more than the user);
        // an inode per 8 KiB (checkouts have many small files); lazy init so making
        // it writes almost nothing.
        run(
            "mkfs.ext4",
            &[
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-m"),
                OsStr::new("0"),
                OsStr::new("-i"),
                OsStr::new("8192"),
                OsStr::new("-E"),
                OsStr::new("lazy_itable_init=1,lazy_journal_init=1,nodiscard"),
                image.as_os_str(),
            ],
        )
        .await
        .context("making the sandbox's file system")?;
        Ok(())
    }

    /// Mounts the disk of `slot` if it has one and it is not mounted (before its
    /// container starts: its mounts would otherwise be missing, and the engine
    /// refuses to start it).
    pub(super) async fn mount_disk(&self, slot: &SandboxId) -> Result<()> {
        // A fork's disk is an overlay on its snapshot's (see `snapshot`).
        if self.fork_snapshot(slot).is_some() {
            return self.mount_fork_disk(slot).await;
        }
        let image = self.disk_image(slot);
        let mount = self.disk_mount(slot);
        if !image.exists() || is_mounted(&mount) {
            return Ok(());
        }
        private_dir(&mount)?;
        run(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("ext4"),
                OsStr::new("-o"),
                OsStr::new("loop,nosuid,nodev,discard"),
                image.as_os_str(),
                mount.as_os_str(),
            ],
        )
        .await
        .context("mounting the sandbox's disk")?;
        Ok(())
    }

    /// Unmounts the disk of `slot` (its container has stopped) and detaches any
    /// loop device still bound to its image.
    pub(super) async fn unmount_disk(&self, slot: &SandboxId) -> Result<()> {
        let image = self.disk_image(slot);
        let mount = self.disk_mount(slot);
        if is_mounted(&mount) {
            // Docker lets go of an image volume's bind mount (it holds the disk) a
            // moment after the container has stopped: a busy disk is retried for a
            // few seconds before it is detached lazily (its loop device would then
            // stay bound until whatever holds it lets go).
            let mut tries = 0;
            while let Err(e) = run("umount", &[mount.as_os_str()]).await {
                tries += 1;
                if tries >= 50 {
                    tracing::warn!(slot = %slot, error = %format!("{e:#}"), "unmounting lazily");
                    run("umount", &[OsStr::new("-l"), mount.as_os_str()]).await?;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        // A fork's own file system, under its overlay (see `snapshot`).
        self.unmount_fork_upper(slot).await?;
        // Another mount of the same file system keeps its loop device bound after
        // ours is gone: Docker unmounts an image volume's bind of the disk
        // (`/var/lib/docker/volumes/…/_data`) a moment after the container stopped.
        // Wait up to 10 s for it; autoclear frees the device when it goes later.
        let mut tries = 0;
        while image.exists() {
            let bound = run("losetup", &[OsStr::new("-j"), image.as_os_str()]).await?;
            let devices: Vec<&str> = bound
                .lines()
                .filter_map(|l| l.split(':').next())
                .filter(|d| !d.is_empty())
                .collect();
            if devices.is_empty() {
                break;
            }
            for device in &devices {
                let _ = run("losetup", &[OsStr::new("-d"), OsStr::new(device)]).await;
            }
            tries += 1;
            if tries >= 100 {
                tracing::warn!(slot = %slot, ?devices, "loop device still in use; freed when let go");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Removes the disk of `slot`: unmounted, its mount point and its image.
    pub(super) async fn remove_disk(&self, slot: &SandboxId) -> Result<()> {
        self.remove_image_volumes(slot).await?;
        self.unmount_disk(slot).await?;
        let mount = self.disk_mount(slot);
        // Never recursive: were it still mounted, that would empty the workspace
        // through it and leave the mount.
        match fs::remove_dir(&mount) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", mount.display())),
        }
        match fs::remove_file(self.disk_image(slot)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing the sandbox's disk"),
        }
        // A fork lets go of its snapshot (see `snapshot`).
        self.release_fork_disk(slot).await
    }

    /// At runner start: mounts the disks of running sandboxes, unmounts those of
    /// sandboxes that are not running, removes those of slots not in `live`.
    pub(super) async fn reconcile_disks(
        &self,
        running: &std::collections::BTreeSet<SandboxId>,
        live: &std::collections::BTreeSet<SandboxId>,
    ) {
        let Ok(entries) = fs::read_dir(self.disks_dir()) else {
            return;
        };
        let mut slots = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let name = name.strip_suffix(".img").unwrap_or(&name);
            if let Ok(slot) = SandboxId::parse(name) {
                slots.insert(slot);
            }
        }
        for slot in slots {
            let done = if !live.contains(&slot) {
                tracing::info!(slot = %slot, "removing the disk of a sandbox that is gone");
                self.remove_disk(&slot).await
            } else if running.contains(&slot) {
                self.mount_disk(&slot).await
            } else {
                self.unmount_disk(&slot).await
            };
            if let Err(e) = done {
                tracing::warn!(slot = %slot, error = %format!("{e:#}"), "reconciling a disk");
            }
        }
    }

    /// What the disk quotas of all sandboxes may add up to when the operator does
    /// not say: what the run directory's file system has available, plus what the
    /// disks already there hold (they are counted at their full quota).
    pub fn disk_capacity_mb(&self) -> u64 {
        let available = statvfs(&self.run_dir).map_or(0, |(_, _, avail)| avail);
        let held: u64 = fs::read_dir(self.disks_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.blocks().saturating_mul(512))
            .sum();
        available.saturating_add(held) >> 20
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\0"), r"/plain\0");
    }
}
