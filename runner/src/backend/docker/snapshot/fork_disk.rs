//! A fork's disk: the snapshot's disk mounted read-only once and shared, the fork's
//! own sparse disk above it, the overlay of the two where any sandbox's disk is.

use super::*;

impl DockerBackend {
    /// Makes a fork's disk: its own file system of `mb` MiB, mounted with the
    /// snapshot's below it. Marks `slot` as a fork of it.
    pub(in crate::backend::docker) async fn make_fork_disk(
        &self,
        slot: &SandboxId,
        fork: &Fork,
        mb: u64,
    ) -> Result<()> {
        self.mark(slot, FORK_MARKER, fork.snapshot.as_str().as_bytes())?;
        self.format_disk(slot, mb).await?;
        self.mount_fork_disk(slot).await
    }

    fn fork_upper(&self, slot: &SandboxId) -> PathBuf {
        self.disks_dir().join(format!("{}.upper", slot.as_str()))
    }

    /// Mounts the fork's disk: the snapshot's (read-only, shared), the fork's own
    /// file system, and the overlay of the two where a disk is mounted.
    pub(in crate::backend::docker) async fn mount_fork_disk(&self, slot: &SandboxId) -> Result<()> {
        let Some(snapshot) = self.fork_snapshot(slot) else {
            bail!("{slot} is not a fork");
        };
        let mount = self.disk_mount(slot);
        if is_mounted(&mount) {
            return Ok(());
        }
        let dir = self.snapshot_dir(&snapshot);
        let lower = dir.join(LOWER);
        let disk = dir.join(DISK);
        if !disk.exists() {
            bail!("the disk of snapshot {snapshot} is gone");
        }
        // Forks made at once share the mount: one makes it.
        static LOWER_MOUNTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let guard = LOWER_MOUNTS.lock().await;
        if !is_mounted(&lower) {
            private_dir(&lower)?;
            run(
                "mount",
                &[
                    OsStr::new("-t"),
                    OsStr::new("ext4"),
                    OsStr::new("-o"),
                    OsStr::new("loop,ro,noload,nosuid,nodev"),
                    disk.as_os_str(),
                    lower.as_os_str(),
                ],
            )
            .await
            .context("mounting a snapshot's disk")?;
        }
        drop(guard);
        let upper = self.fork_upper(slot);
        if !is_mounted(&upper) {
            private_dir(&upper)?;
            run(
                "mount",
                &[
                    OsStr::new("-t"),
                    OsStr::new("ext4"),
                    OsStr::new("-o"),
                    OsStr::new("loop,nosuid,nodev,discard"),
                    self.disk_image(slot).as_os_str(),
                    upper.as_os_str(),
                ],
            )
            .await
            .context("mounting the fork's disk")?;
        }
        for sub in ["upper", "work"] {
            match fs::create_dir(upper.join(sub)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).context("preparing the fork's disk"),
            }
        }
        let _ = fs::remove_dir(upper.join("lost+found"));
        private_dir(&mount)?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={},nosuid,nodev",
            lower.display(),
            upper.join("upper").display(),
            upper.join("work").display()
        );
        run(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("overlay"),
                OsStr::new("-o"),
                OsStr::new(&options),
                OsStr::new("overlay"),
                mount.as_os_str(),
            ],
        )
        .await
        .context("mounting the fork's overlay")?;
        Ok(())
    }

    /// After its overlay is unmounted: unmounts a fork's own file system (nothing
    /// for another sandbox).
    pub(in crate::backend::docker) async fn unmount_fork_upper(
        &self,
        slot: &SandboxId,
    ) -> Result<()> {
        let upper = self.fork_upper(slot);
        if is_mounted(&upper) {
            run("umount", &[upper.as_os_str()])
                .await
                .context("unmounting the fork's disk")?;
        }
        Ok(())
    }

    /// After a fork's disk is removed: its mount point goes, and the snapshot it
    /// used goes too if it was deleted and this was its last fork.
    pub(in crate::backend::docker) async fn release_fork_disk(
        &self,
        slot: &SandboxId,
    ) -> Result<()> {
        let Some(snapshot) = self.fork_snapshot(slot) else {
            return Ok(());
        };
        match fs::remove_dir(self.fork_upper(slot)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing the fork's disk"),
        }
        let _ = fs::remove_file(self.private_dir(slot).join(FORK_MARKER));
        let deleted = self.snapshot_dir(&snapshot).join(DELETED).exists();
        if deleted && self.snapshot_users(&snapshot).is_empty() {
            self.remove_snapshot_storage(&snapshot).await;
        }
        Ok(())
    }
}
