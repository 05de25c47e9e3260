//! A snapshot's image without `docker commit`: the staged writable layer, its
//! overlay whiteouts turned into an image layer's `.wh.` files, archived as one
//! layer above the source image's and loaded (`docker load`) with the source
//! image's config, while the snapshot's forks are being made (each waits for it
//! only when it needs the image; its disk is made meanwhile). On this machine's
//! storage driver (fuse-overlayfs) the engine's commit diffs a container against
//! its image by walking both whole trees through FUSE: 3.4 s for a 10-byte change
//! to warren-base, where a load of the same layer took 0.15 s (it only unpacks the
//! layer; the image's other layers are the engine's already and are not sent).

use std::ffi::{CStr, CString, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;

use bollard::models::{ImageConfig, ImageInspect};
use bollard::query_parameters::ImportImageOptions;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::*;

/// In a snapshot's directory while it is taken: the staged layer's archive.
const LAYER_TAR: &str = "layer.tar";
/// An image layer's whiteout: `.wh.<name>` hides `name` of the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// An image layer's opaque directory: this file in it hides the layers' below.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// fuse-overlayfs marks an opaque directory with this device (beside the marker
/// file, or an xattr).
const OVERLAY_OPAQUE_DEVICE: &str = ".wh..opq";
/// The xattrs an overlay marks an opaque directory with.
const OPAQUE_XATTRS: [&CStr; 2] = [c"trusted.overlay.opaque", c"user.fuseoverlayfs.opaque"];
/// A tar block.
const BLOCK: usize = 512;
/// How much of the layer's archive is read at a time while it is sent.
const CHUNK: usize = 1 << 20;

/// Where the time of staging an image went, for whoever tunes it.
#[derive(Debug, Default)]
pub(super) struct Staging {
    pub(super) whiteouts: Duration,
    pub(super) archive: Duration,
    pub(super) hash: Duration,
    pub(super) layer_bytes: u64,
}

/// A snapshot's image ready to be loaded: the archive's first and last bytes
/// around the layer's, which are read from its file as they are sent.
pub(super) struct StagedImage {
    staged: PathBuf,
    archive: PathBuf,
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// How a load ended, for the creates that wait for it (`None` while it runs).
type LoadResult = Option<std::result::Result<(), String>>;

/// The snapshot images being loaded, by snapshot id (unique on every runner): a
/// create from one waits for its load; one not here is loaded (or gone).
static LOADING: std::sync::LazyLock<
    std::sync::Mutex<HashMap<String, tokio::sync::watch::Receiver<LoadResult>>>,
> = std::sync::LazyLock::new(Default::default);

/// A snapshot's image to be made from its writable layer's copy.
pub(super) struct NewImage {
    pub(super) snapshot: SnapshotId,
    /// `warren-snapshot:<snp>`.
    pub(super) name: String,
    /// The source's image, whose layers are below the new one.
    pub(super) base: ImageInspect,
    pub(super) config: ImageConfig,
}

/// Stages `image` from the layer copied into `dir` and starts its load (see
/// [`image_loaded`]); returns once the load is under way.
pub(super) async fn stage_and_load(
    docker: Docker,
    image: NewImage,
    dir: PathBuf,
) -> Result<Staging> {
    let NewImage {
        snapshot,
        name,
        base,
        config,
    } = image;
    let (staged, staging) = stage_image(&name, &base, &dir, config).await?;
    load_in_background(&docker, &snapshot, staged);
    Ok(staging)
}

/// Prepares the layer staged in `dir` to be loaded as the image `image`: `base`'s
/// layers and `config`, with the staged layer above them.
async fn stage_image(
    image: &str,
    base: &ImageInspect,
    dir: &Path,
    config: ImageConfig,
) -> Result<(StagedImage, Staging)> {
    let mut staging = Staging::default();
    let staged = dir.join(STAGED);
    let archive = dir.join(LAYER_TAR);
    let began = Instant::now();
    let walk = staged.clone();
    tokio::task::spawn_blocking(move || to_image_whiteouts(&walk))
        .await
        .context("converting the staged layer's whiteouts")??;
    staging.whiteouts = began.elapsed();
    let began = Instant::now();
    archive_layer(&staged, &archive).await?;
    staging.archive = began.elapsed();
    let began = Instant::now();
    let hashed = archive.clone();
    let (diff_id, size) = tokio::task::spawn_blocking(move || diff_id(&hashed))
        .await
        .context("hashing the snapshot's layer")??;
    staging.hash = began.elapsed();
    staging.layer_bytes = size;
    let mut layers = base
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default();
    // The engine has the base's layers (its image is in use by the source): a
    // load looks each up by its chain and opens a layer's file only if missing.
    let mut files: Vec<String> = (0..layers.len()).map(|i| format!("{i}.tar")).collect();
    files.push(LAYER_TAR.to_owned());
    layers.push(diff_id);
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [image],
        "Layers": files,
    }]);
    let mut image_config = serde_json::json!({
        "architecture": base.architecture.as_deref().unwrap_or("amd64"),
        "os": base.os.as_deref().unwrap_or("linux"),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": layers},
    });
    if let Some(variant) = &base.variant {
        image_config["variant"] = variant.clone().into();
    }
    let mut head = Vec::new();
    for (name, bytes) in [
        ("manifest.json", serde_json::to_vec(&manifest)?),
        ("config.json", serde_json::to_vec(&image_config)?),
    ] {
        head.extend_from_slice(&tar_header(name, bytes.len() as u64));
        head.extend_from_slice(&bytes);
        head.resize(head.len().next_multiple_of(BLOCK), 0);
    }
    head.extend_from_slice(&tar_header(LAYER_TAR, size));
    let padding = usize::try_from(size.next_multiple_of(BLOCK as u64) - size).unwrap_or(0);
    // The layer's padding, then the archive's end (two empty blocks).
    let tail = vec![0u8; padding + 2 * BLOCK];
    let image = StagedImage {
        staged,
        archive,
        head,
        tail,
    };
    Ok((image, staging))
}

/// Loads `image` for `snapshot` while the caller goes on: the snapshot's creates
/// wait for it ([`image_loaded`]), and so does its removal.
fn load_in_background(docker: &Docker, snapshot: &SnapshotId, image: StagedImage) {
    let (done, waiting) = tokio::sync::watch::channel(None);
    if let Ok(mut loading) = LOADING.lock() {
        loading.insert(snapshot.as_str().to_owned(), waiting);
    }
    let docker = docker.clone();
    let snapshot = snapshot.clone();
    tokio::spawn(async move {
        let began = Instant::now();
        let loaded = load(&docker, image).await;
        match &loaded {
            Ok(()) => tracing::info!(
                %snapshot,
                load_ms = began.elapsed().as_millis(),
                "snapshot image loaded"
            ),
            Err(e) => {
                tracing::warn!(%snapshot, error = %format!("{e:#}"), "loading a snapshot's image");
            }
        }
        let _ = done.send(Some(loaded.map_err(|e| format!("{e:#}"))));
        if let Ok(mut loading) = LOADING.lock() {
            loading.remove(snapshot.as_str());
        }
    });
}

/// Waits until the image of `snapshot` is loaded, if it is being loaded; fails
/// if its load did.
pub(super) async fn image_loaded(snapshot: &SnapshotId) -> Result<()> {
    let waiting = LOADING
        .lock()
        .ok()
        .and_then(|loading| loading.get(snapshot.as_str()).cloned());
    let Some(mut waiting) = waiting else {
        return Ok(());
    };
    let ended = waiting
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|ended| ended.clone());
    match ended {
        Some(Ok(())) => Ok(()),
        Some(Err(message)) => bail!("loading the snapshot's image failed: {message}"),
        None => bail!("loading the snapshot's image stopped"),
    }
}

/// Sends the archive of `image` (its layer read from its file as it goes) to the
/// engine's load, then removes the staged layer and the archive.
async fn load(docker: &Docker, image: StagedImage) -> Result<()> {
    let StagedImage {
        staged,
        archive,
        head,
        tail,
    } = image;
    let file = tokio::fs::File::open(&archive)
        .await
        .context("opening the snapshot's layer")?;
    let layer = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = vec![0u8; CHUNK];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(bytes::Bytes::from(chunk)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let body = futures_util::stream::iter([Ok(bytes::Bytes::from(head))])
        .chain(layer)
        .chain(futures_util::stream::iter([Ok(bytes::Bytes::from(tail))]));
    let mut answers = docker.import_image_stream(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        body,
        None,
    );
    while let Some(answer) = answers.next().await {
        answer.context("loading the snapshot's image")?;
    }
    for (what, removed) in [
        ("the staged layer", fs::remove_dir_all(&staged)),
        ("the layer's archive", fs::remove_file(&archive)),
    ] {
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing {what}");
        }
    }
    Ok(())
}

/// Turns the overlay whiteouts of a writable layer's copy into an image layer's:
/// a deleted `name` (a 0:0 character device) becomes an empty `.wh.name`, an opaque
/// directory (an overlay xattr, or fuse-overlayfs's `.wh..opq` device) gets a
/// `.wh..wh..opq`. The copy is the runner's (in its 0700 directory, taken while the
/// sandbox was paused), so nothing changes under the walk; links are never followed.
fn to_image_whiteouts(root: &Path) -> Result<()> {
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let mut opaque = has_opaque_xattr(&dir);
        // Listed first: the directory changes below.
        let entries: Vec<fs::DirEntry> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<io::Result<_>>()?;
        for entry in entries {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            if !kind.is_char_device() || meta.rdev() != 0 {
                continue;
            }
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            let name = entry.file_name();
            if name == OVERLAY_OPAQUE_DEVICE {
                opaque = true;
                continue;
            }
            let mut whiteout = OsString::from(WHITEOUT_PREFIX);
            whiteout.push(&name);
            mark(&dir.join(whiteout))?;
        }
        if opaque {
            mark(&dir.join(OPAQUE_MARKER))?;
        }
    }
    Ok(())
}

/// An empty marker file; one already there (whatever it is) stands.
fn mark(path: &Path) -> Result<()> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// Whether an overlay xattr marks `dir` opaque.
fn has_opaque_xattr(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    OPAQUE_XATTRS.iter().any(|name| {
        let mut value = [0u8; 1];
        // SAFETY: both names are NUL-terminated C strings, and the buffer is
        // `value.len()` bytes the call may write.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n == 1 && value[0] == b'y'
    })
}

/// Archives the staged layer's entries (not its root: the root's own mode, 0700
/// here, would become the image's `/`), keeping owners as numbers, file
/// capabilities and user xattrs (never an overlay's own).
async fn archive_layer(staged: &Path, archive: &Path) -> Result<()> {
    let mut names: Vec<OsString> = fs::read_dir(staged)
        .context("listing the staged layer")?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    let mut args: Vec<OsString> = [
        "--create",
        "--format=posix",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=security.capability",
        "--xattrs-include=user.*",
        "--xattrs-exclude=user.fuseoverlayfs.*",
        "--no-acls",
        "--no-selinux",
    ]
    .map(OsString::from)
    .into();
    args.push("--file".into());
    args.push(archive.into());
    args.push("--directory".into());
    args.push(staged.into());
    if names.is_empty() {
        args.push("--files-from=/dev/null".into());
    } else {
        args.push("--".into());
        args.extend(names);
    }
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    run("tar", &args)
        .await
        .context("archiving the snapshot's layer")?;
    Ok(())
}

/// The layer's diff id (the digest of its archive) and its size.
fn diff_id(archive: &Path) -> Result<(String, u64)> {
    let mut file = fs::File::open(archive).context("opening the snapshot's layer")?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .context("reading the snapshot's layer")?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((format!("sha256:{digest}"), size))
}

/// The ustar header of a plain file `name` (ASCII, under 100 bytes) of `size`
/// bytes; a size past the octal field's 8 GiB is written base-256, as GNU tar does.
fn tar_header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size <= 0o777_7777_7777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_header_has_its_size_and_checksum() {
        let h = tar_header("config.json", 1234);
        assert_eq!(&h[..11], b"config.json");
        assert_eq!(&h[124..136], b"00000002322\0");
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        let written = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(written, 8).unwrap(), sum);
        let big = tar_header("layer.tar", 1 << 40);
        assert_eq!(big[124], 0x80);
        assert_eq!(&big[128..136], &(1u64 << 40).to_be_bytes());
    }

    #[test]
    fn overlay_whiteouts_become_image_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/opaque")).unwrap();
        fs::write(root.join("etc/kept"), b"x").unwrap();
        let device = |path: &Path| {
            let path = CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: a NUL-terminated path; a 0:0 character device as an overlay
            // makes a whiteout (root only: the test is skipped otherwise).
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR, 0) == 0 }
        };
        if !device(&root.join("etc/issue")) {
            return;
        }
        assert!(device(&root.join("etc/opaque").join(OVERLAY_OPAQUE_DEVICE)));
        to_image_whiteouts(root).unwrap();
        let mut etc: Vec<String> = fs::read_dir(root.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        etc.sort();
        assert_eq!(etc, [".wh.issue", "kept", "opaque"]);
        let opaque: Vec<_> = fs::read_dir(root.join("etc/opaque"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(opaque, [OPAQUE_MARKER]);
    }
}
