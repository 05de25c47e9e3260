//! Snapshots and forks (issue 26): a running sandbox's file system captured on this
//! runner, and sandboxes made from it. Processes are not captured: a fork starts
//! its agent afresh (a persistent session's shell starts anew in it).
//!
//! A snapshot `<snp>` is two things, both copy-on-write for its forks:
//!
//! - **Its root file system**: the source's writable layer, copied (whiteouts and
//!   all) while it is paused, then, once the source runs again, archived as an
//!   image layer and loaded (`docker load`, see [`layer`]) as the runner-local image
//!   `warren-snapshot:<snp>` (labelled [`LABEL_SNAPSHOT`]) with the source image's
//!   config: one layer of what the sandbox changed (`apt-get install`, `pip install
//!   --user`) above its image's layers, shared by every fork. `docker commit` is not
//!   used: on an engine whose storage driver diffs naively (fuse-overlayfs) it
//!   walks the image's whole tree, seconds (a commit of the running source froze it
//!   for 7 s; of a never-started container holding the staged layer, 0.8–3.4 s).
//!   Nothing of the source container's config reaches the image: the create-time
//!   env (secrets) and Warren's labels stay out.
//! - **Its disk** (workspace, `/tmp`, `/var/tmp`, the image's volumes):
//!   `<run dir>/.snapshots/<snp>/disk.img`, a sparse copy of the source's disk image
//!   made while its file system is frozen (`fsfreeze`, which also leaves its journal
//!   clean). A fork's disk is an overlay: the snapshot's disk mounted read-only (once,
//!   at `.snapshots/<snp>/lower`) below, the fork's own disk of its quota
//!   (`.disks/<slot>.img`, mounted at `.disks/<slot>.upper`) above; the overlay is
//!   mounted where any sandbox's disk is (`.disks/<slot>`), so the container's mounts
//!   and the quota watcher (which measures the upper file system) are unchanged.
//!
//! A fork is marked by its slot's private marker `snapshot` (the snapshot id).
//! A snapshot deleted while forks use it is marked `deleted` and its storage goes
//! with the last of them; the engine would refuse to remove an image in use anyway.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use bollard::models::{ImageConfig, ImageInspect};
use bollard::query_parameters::RemoveImageOptions;
use serde::{Deserialize, Serialize};

use super::disk::{is_mounted, private_dir, run};
use super::*;
use crate::protocol::{SnapshotId, SnapshotTaken};

mod fork_disk;
mod layer;

/// Every snapshot image carries this label, valued with the snapshot id.
pub const LABEL_SNAPSHOT: &str = "org.warren.snapshot";
/// The repository of snapshot images (runner-local, never pushed).
const SNAPSHOT_REPO: &str = "warren-snapshot";
/// The directory beside the run directories that holds the snapshots.
const SNAPSHOTS_DIR: &str = ".snapshots";
/// A fork's private marker: the snapshot it was made from.
const FORK_MARKER: &str = "snapshot";
/// In a snapshot's directory: what it is.
const META: &str = "meta.json";
/// In a snapshot's directory (0600, root's): the source's create-time env, secrets
/// included, as its container's config held it. Never in the gateway's store.
const ENV: &str = "env.json";
/// In a snapshot's directory: deleted, kept for the forks that use it.
const DELETED: &str = "deleted";
/// In a snapshot's directory: its copy of the source's disk.
const DISK: &str = "disk.img";
/// In a snapshot's directory: where its disk is mounted (read-only) for forks.
const LOWER: &str = "lower";
/// In a snapshot's directory while it is taken: the source's writable layer, copied
/// while it was paused, until it is loaded as the snapshot's image.
const STAGED: &str = "rootfs";

/// What the runner keeps of a snapshot beside its disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) source: String,
    /// The snapshot's image (`warren-snapshot:<snp>`).
    pub(super) image: String,
    /// The image the source was made from.
    pub(super) base_image: String,
    /// The session user the source was made for (a devcontainer.json's), if
    /// named: its forks' sessions run as the same user.
    #[serde(default)]
    pub(super) user: Option<String>,
    /// The source's working directory (a devcontainer.json's `workspaceFolder`),
    /// if not `/workspace`: its forks have the workspace there too.
    #[serde(default)]
    pub(super) workdir: Option<String>,
}

/// A fork being made: its snapshot and the snapshot's image.
pub(super) struct Fork {
    pub(super) snapshot: SnapshotId,
    pub(super) meta: Meta,
}

/// How long a capture froze the source, and where that time went.
struct Captured {
    frozen: Duration,
    pause: Duration,
    /// Freezing, copying and thawing its disk.
    disk: Duration,
    /// Copying its writable layer (beside the disk).
    layer: Duration,
    /// Staging the image from the layer's copy (beside the disk's).
    staging: layer::Staging,
}

/// Freezes a mounted file system (FIFREEZE) until dropped or thawed.
struct Frozen<'a> {
    mount: &'a Path,
    thawed: bool,
}

impl Frozen<'_> {
    async fn thaw(mut self) -> Result<()> {
        self.thawed = true;
        run("fsfreeze", &[OsStr::new("-u"), self.mount.as_os_str()]).await?;
        Ok(())
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        // A capture that failed half-way must not leave the sandbox's disk frozen.
        if !self.thawed {
            let _ = std::process::Command::new("fsfreeze")
                .arg("-u")
                .arg(self.mount)
                .status();
        }
    }
}

impl DockerBackend {
    fn snapshots_dir(&self) -> PathBuf {
        self.run_dir.join(SNAPSHOTS_DIR)
    }

    fn snapshot_dir(&self, snapshot: &SnapshotId) -> PathBuf {
        self.snapshots_dir().join(snapshot.as_str())
    }

    /// The snapshot a fork's slot was made from, if it is a fork.
    pub(super) fn fork_snapshot(&self, slot: &SandboxId) -> Option<SnapshotId> {
        fs::read_to_string(self.private_dir(slot).join(FORK_MARKER))
            .ok()
            .and_then(|s| SnapshotId::parse(s.trim()).ok())
    }

    /// What the runner has of `snapshot`; refused as `snapshot_not_found` if it has
    /// none (or it was deleted).
    pub(super) fn snapshot_meta(&self, snapshot: &SnapshotId) -> crate::Result<Meta> {
        let dir = self.snapshot_dir(snapshot);
        let not_found = || {
            crate::Error::refused(
                "snapshot_not_found",
                format!("snapshot {snapshot} is not on this runner"),
            )
        };
        if dir.join(DELETED).exists() {
            return Err(not_found());
        }
        let bytes = match fs::read(dir.join(META)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(anyhow::Error::new(e).context("reading a snapshot").into()),
        };
        Ok(serde_json::from_slice(&bytes).context("reading a snapshot")?)
    }

    /// The create-time env of the snapshot's source.
    fn snapshot_env(&self, snapshot: &SnapshotId) -> Result<BTreeMap<String, Secret>> {
        let bytes =
            fs::read(self.snapshot_dir(snapshot).join(ENV)).context("reading a snapshot's env")?;
        serde_json::from_slice(&bytes).context("reading a snapshot's env")
    }

    /// Captures the running sandbox `id` as `snapshot`: pauses it, freezes its disk,
    /// copies the disk (sparse) and its writable layer, lets it go on, then stages
    /// the layer as the snapshot's image and loads it while the caller goes on
    /// (see [`layer`]).
    pub async fn snapshot(
        &self,
        id: &SandboxId,
        snapshot: &SnapshotId,
    ) -> crate::Result<SnapshotTaken> {
        let began = Instant::now();
        let name = container_name(id);
        let info = match self.docker.inspect_container(&name, None).await {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => {
                return Err(crate::Error::refused(
                    "not_found",
                    format!("unknown sandbox {id}"),
                ));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("asking the Docker engine")
                    .into());
            }
        };
        let running = info.state.as_ref().and_then(|s| s.running) == Some(true)
            && info.state.as_ref().and_then(|s| s.paused) != Some(true);
        if !running || self.marked(id, DELETING_MARKER) {
            return Err(crate::Error::refused(
                "not_running",
                format!("sandbox {id} is not running: start it, then snapshot it"),
            ));
        }
        let slot = self.objects_slot(id);
        if self.fork_snapshot(&slot).is_some() {
            // Its disk is an overlay, which cannot be frozen: a copy of the merged
            // tree would be needed (not built yet).
            return Err(crate::Error::refused(
                "not_supported",
                format!("sandbox {id} is itself a fork: snapshot the sandbox it was forked from"),
            ));
        }
        let env = self.env(id).await?;
        let upper = info
            .graph_driver
            .as_ref()
            .and_then(|g| g.data.get("UpperDir"))
            .map(PathBuf::from);
        let config = info.config.unwrap_or_default();
        let base_image = config.image.clone().unwrap_or_default();
        // By its id: the name may have been given to another image since.
        let base_id = info.image.clone().unwrap_or_else(|| base_image.clone());
        let base = self
            .docker
            .inspect_image(&base_id)
            .await
            .with_context(|| format!("inspecting the sandbox's image {base_image}"))?;
        let dir = self.snapshot_dir(snapshot);
        private_dir(&self.snapshots_dir())?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let image = format!("{SNAPSHOT_REPO}:{}", snapshot.as_str());
        let new_image = layer::NewImage {
            snapshot: snapshot.clone(),
            name: image.clone(),
            config: snapshot_config(&base, snapshot, &self.runner),
            base,
        };
        let captured = self
            .capture(&name, &slot, &dir, upper.as_deref(), new_image)
            .await;
        let captured = match captured {
            Ok(done) => done,
            Err(e) => {
                self.remove_snapshot_storage(snapshot).await;
                return Err(e.into());
            }
        };
        let (user, workdir) = source_settings(config.env.as_deref().unwrap_or_default());
        let meta = Meta {
            source: id.as_str().to_owned(),
            image: image.clone(),
            base_image,
            user,
            workdir,
        };
        let written = serde_json::to_vec(&env)
            .context("a snapshot's env")
            .and_then(|env| write_file(&dir.join(ENV), &env))
            .and_then(|()| serde_json::to_vec(&meta).context("a snapshot"))
            .and_then(|meta| write_file(&dir.join(META), &meta));
        if let Err(e) = written {
            self.remove_snapshot_storage(snapshot).await;
            return Err(e.into());
        }
        let disk_bytes = fs::metadata(dir.join(DISK)).map_or(0, |m| m.blocks() * 512);
        let frozen = captured.frozen;
        let ms = |d: Duration| d.as_millis();
        tracing::info!(
            sandbox = %id,
            %snapshot,
            frozen_ms = ms(frozen),
            pause_ms = ms(captured.pause),
            disk_copy_ms = ms(captured.disk),
            layer_copy_ms = ms(captured.layer),
            whiteouts_ms = ms(captured.staging.whiteouts),
            archive_ms = ms(captured.staging.archive),
            hash_ms = ms(captured.staging.hash),
            total_ms = ms(began.elapsed()),
            disk_bytes,
            layer_bytes = captured.staging.layer_bytes,
            "snapshot taken"
        );
        Ok(SnapshotTaken {
            size_bytes: disk_bytes + captured.staging.layer_bytes,
            frozen_ms: u64::try_from(frozen.as_millis()).unwrap_or(u64::MAX),
            image,
        })
    }

    /// The capture itself, while the sandbox is paused: its disk (frozen, copied
    /// sparse) and, at the same time, its writable layer (copied as it is:
    /// whiteouts and all, usually small) into `dir`, from which `image` is staged
    /// and its load started by a task of its own at once: beside the disk's copy,
    /// which usually takes longer, and never keeping the sandbox paused.
    async fn capture(
        &self,
        name: &str,
        slot: &SandboxId,
        dir: &Path,
        upper: Option<&Path>,
        image: layer::NewImage,
    ) -> Result<Captured> {
        let mount = self.disk_mount(slot);
        let disk = self.disk_image(slot);
        let staged = dir.join(STAGED);
        private_dir(&staged)?;
        let began = Instant::now();
        self.docker
            .pause_container(name)
            .await
            .context("pausing the sandbox")?;
        let pause = began.elapsed();
        let disk_copy = async {
            let began = Instant::now();
            let frozen = if is_mounted(&mount) {
                run("fsfreeze", &[OsStr::new("-f"), mount.as_os_str()])
                    .await
                    .context("freezing the sandbox's disk")?;
                Some(Frozen {
                    mount: &mount,
                    thawed: false,
                })
            } else {
                None
            };
            if disk.exists() {
                run(
                    "cp",
                    &[
                        OsStr::new("--sparse=always"),
                        disk.as_os_str(),
                        dir.join(DISK).as_os_str(),
                    ],
                )
                .await
                .context("copying the sandbox's disk")?;
            }
            if let Some(frozen) = frozen {
                frozen.thaw().await?;
            }
            Ok::<_, anyhow::Error>(began.elapsed())
        };
        let layer_copy = async {
            let began = Instant::now();
            if let Some(upper) = upper {
                let mut from = upper.as_os_str().to_owned();
                from.push("/.");
                run("cp", &[OsStr::new("-a"), &from, staged.as_os_str()])
                    .await
                    .context("copying the sandbox's writable layer")?;
            }
            let copied = began.elapsed();
            let staging = tokio::spawn(layer::stage_and_load(
                self.docker.clone(),
                image,
                dir.to_owned(),
            ));
            Ok::<_, anyhow::Error>((copied, staging))
        };
        // Both run to their end: a staging under way is waited for below, so that
        // a failed capture's cleanup comes after its load has begun.
        let (disk, layer) = tokio::join!(disk_copy, layer_copy);
        let unpaused = self.docker.unpause_container(name).await;
        let frozen = began.elapsed();
        let (layer, staging) = layer?;
        let staging = staging
            .await
            .context("staging the snapshot's image")
            .and_then(|staged| staged);
        let disk = disk?;
        unpaused.context("unpausing the sandbox")?;
        let staging = staging?;
        Ok(Captured {
            frozen,
            pause,
            disk,
            layer,
            staging,
        })
    }

    /// The image a fork of `fork` is made from (the snapshot's: it was allowed when
    /// its source was made).
    pub(super) async fn snapshot_image_info(
        &self,
        fork: &Fork,
    ) -> crate::Result<bollard::models::ImageInspect> {
        layer::image_loaded(&fork.snapshot).await?;
        match self.docker.inspect_image(&fork.meta.image).await {
            Ok(info) => Ok(info),
            Err(e) if is_not_found(&e) => Err(crate::Error::refused(
                "snapshot_not_found",
                format!(
                    "the image of snapshot {} is gone from this runner",
                    fork.snapshot
                ),
            )),
            Err(e) => Err(anyhow::Error::new(e)
                .context("inspecting a snapshot's image")
                .into()),
        }
    }

    /// Creates the sandbox `id` from `snapshot` (or starts it, if it exists), then
    /// switches its repository to `branch`, if asked.
    pub async fn create_from_snapshot(
        &self,
        id: &SandboxId,
        snapshot: &SnapshotId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
        branch: Option<&str>,
    ) -> crate::Result<()> {
        warren_keys::TokenVerifier::from_base64(token_key).context("invalid token_key")?;
        let mut spec = spec.clone();
        // What the snapshot holds stands in for these.
        spec.image = None;
        spec.repo = None;
        spec.devcontainer = false;
        super::super::validate_spec(&spec)?;
        if self
            .docker
            .inspect_container(&container_name(id), None)
            .await
            .is_ok()
        {
            // A restart: the fork is a sandbox like any other by now.
            return self.create(id, token_key, authorized_keys, &spec).await;
        }
        if self.marked(id, DELETING_MARKER) {
            return Err(crate::Error::failed(format_args!(
                "sandbox {id} is being deleted"
            )));
        }
        let fork = Fork {
            snapshot: snapshot.clone(),
            meta: self.snapshot_meta(snapshot)?,
        };
        // The source's user and workspace folder, unless the create names its own.
        if spec.user.is_none() {
            spec.user.clone_from(&fork.meta.user);
        }
        if spec.workdir.is_none() {
            spec.workdir.clone_from(&fork.meta.workdir);
        }
        // The source's env, with the create's entries over it.
        let mut env = self.snapshot_env(snapshot)?;
        env.append(&mut spec.env);
        spec.env = env;
        super::super::validate_spec(&spec)?;
        let dir = self.sandbox_run_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        super::super::write_authorized_keys(&dir, authorized_keys)?;
        let name = container_name(id);
        let began = Instant::now();
        let mut made_at = Duration::ZERO;
        let made = async {
            self.make(
                id,
                Serves::Fork {
                    token_key,
                    fork: &fork,
                },
                &fork.meta.image,
                &spec,
                &name,
            )
            .await?;
            made_at = began.elapsed();
            if let Some(branch) = branch {
                self.fork_branch(id, branch).await?;
            }
            Ok::<_, crate::Error>(())
        }
        .await;
        self.refill_spares();
        if let Err(e) = made {
            if let Err(cleanup) = self.remove_all(id).await {
                tracing::warn!(sandbox = %id, error = %format!("{cleanup:#}"), "cleaning up a failed fork");
            }
            return Err(e);
        }
        tracing::info!(
            sandbox = %id,
            %snapshot,
            make_ms = made_at.as_millis(),
            branch_ms = (began.elapsed() - made_at).as_millis(),
            "sandbox created from a snapshot"
        );
        Ok(())
    }

    /// Switches the fork's workspace repository (if it has one) to the new branch
    /// `branch`, its uncommitted changes carried over: one exec (each is a round
    /// trip to the engine), in the sandbox as its user, as any git of the workspace.
    async fn fork_branch(&self, id: &SandboxId, branch: &str) -> crate::Result<()> {
        crate::protocol::validate::branch(branch)
            .map_err(|e| crate::Error::refused("invalid_branch", e.to_string()))?;
        let user = self.session_user(id)?;
        // No repository (or no git) is nothing to switch; the branch is an
        // argument, never part of the script.
        let script = format!(
            "git -C {WORKSPACE} rev-parse --git-dir >/dev/null 2>&1 || exit 0; \
             exec git -C {WORKSPACE} checkout --quiet -b \"$1\""
        );
        self.exec_as(id, &user, &["sh", "-c", &script, "sh", branch], None)
            .await
            .with_context(|| format!("creating the fork's branch {branch}"))?;
        Ok(())
    }

    /// Forgets `snapshot`: its storage goes now, or with the last fork made from it.
    pub async fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<()> {
        let dir = self.snapshot_dir(snapshot);
        if !dir.is_dir() {
            return Ok(());
        }
        write_file(&dir.join(DELETED), b"")?;
        if self.snapshot_users(snapshot).is_empty() {
            self.remove_snapshot_storage(snapshot).await;
        } else {
            tracing::info!(%snapshot, "snapshot deleted; its storage goes with its last fork");
        }
        Ok(())
    }

    /// The slots of the forks made from `snapshot` that still exist.
    fn snapshot_users(&self, snapshot: &SnapshotId) -> Vec<SandboxId> {
        let Ok(entries) = fs::read_dir(self.run_dir.join(PRIVATE_DIR)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| SandboxId::parse(&e.file_name().to_string_lossy()).ok())
            .filter(|slot| self.fork_snapshot(slot).as_ref() == Some(snapshot))
            .collect()
    }

    /// Removes a snapshot's image, disk and directory (best effort: what is left is
    /// logged, and tried again at the next delete of a fork).
    async fn remove_snapshot_storage(&self, snapshot: &SnapshotId) {
        // A load still running would make the image after it is removed.
        let _ = layer::image_loaded(snapshot).await;
        let dir = self.snapshot_dir(snapshot);
        let lower = dir.join(LOWER);
        if is_mounted(&lower)
            && let Err(e) = run("umount", &[lower.as_os_str()]).await
        {
            tracing::warn!(%snapshot, error = %format!("{e:#}"), "unmounting a snapshot's disk");
            return;
        }
        let image = format!("{SNAPSHOT_REPO}:{}", snapshot.as_str());
        match self
            .docker
            .remove_image(&image, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(%snapshot, error = %e, "removing a snapshot's image");
                return;
            }
        }
        let _ = fs::remove_dir(&lower);
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(%snapshot, error = %e, "removing a snapshot's directory");
        } else {
            tracing::info!(%snapshot, "snapshot storage removed");
        }
    }
}

/// The session user and working directory a sandbox's container was made with
/// (the runner's own variables in its config), unless they are the defaults.
fn source_settings(env: &[String]) -> (Option<String>, Option<String>) {
    let value = |name: &str| {
        env.iter()
            .filter_map(|e| e.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let user = value("WARREN_SANDBOX_USER").filter(|u| !u.is_empty() && u != "auto");
    let workdir = value("WARREN_WORKDIR").filter(|w| !w.is_empty() && w != WORKSPACE);
    (user, workdir)
}

/// The config of a snapshot's image: its source image's, labelled as the
/// snapshot's. Nothing of the source container's config goes in (the load merges
/// nothing), so neither the create-time env nor Warren's own labels are written
/// into the image.
fn snapshot_config(base: &ImageInspect, snapshot: &SnapshotId, runner: &str) -> ImageConfig {
    let mut config = base.config.clone().unwrap_or_default();
    let labels = config.labels.get_or_insert_default();
    labels.insert(LABEL_SNAPSHOT.to_owned(), snapshot.as_str().to_owned());
    labels.insert(LABEL_RUNNER.to_owned(), runner.to_owned());
    config
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_image_has_its_images_config_and_labels() {
        let base = ImageInspect {
            config: Some(ImageConfig {
                env: Some(vec!["PATH=/bin".into(), "LANG=C".into()]),
                labels: Some(HashMap::from([("maintainer".into(), "x".into())])),
                user: Some("dev".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let snapshot = SnapshotId::generate();
        let config = snapshot_config(&base, &snapshot, "run-1");
        assert_eq!(config.env.unwrap(), ["PATH=/bin", "LANG=C"]);
        assert_eq!(config.user.as_deref(), Some("dev"));
        let labels = config.labels.unwrap();
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert_eq!(labels["maintainer"], "x");
        assert_eq!(labels[LABEL_SNAPSHOT], snapshot.as_str());
        assert_eq!(labels[LABEL_RUNNER], "run-1");
    }

    #[test]
    fn a_forks_user_and_workdir_are_its_sources_unless_default() {
        let env = |user: &str, workdir: &str| -> Vec<String> {
            vec![
                "PATH=/bin".into(),
                format!("WARREN_SANDBOX_USER={user}"),
                format!("WARREN_WORKDIR={workdir}"),
            ]
        };
        assert_eq!(
            source_settings(&env("dev", "/src/app")),
            (Some("dev".into()), Some("/src/app".into()))
        );
        assert_eq!(source_settings(&env("auto", WORKSPACE)), (None, None));
        assert_eq!(source_settings(&[]), (None, None));
    }
}
