//! The `warren sync` and `warren mirror` tests' fixture: a Docker stack with a
//! busybox sandbox and its owner's API key, the library's endpoint for it, trees
//! to send and read back, and a mirror running in the background.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use warren_keys::SandboxId;
use warren_runner::protocol::SandboxSpec;
use warren_sync::{Credential, Endpoint, Event, MirrorOptions, SeedOptions, SeedSummary};

use crate::stack::{DockerStack, docker_ok};
use crate::{Client, Cmd};

pub const BUSYBOX: &str = "warren-busybox:latest";

pub struct Fixture {
    pub stack: DockerStack,
    pub id: SandboxId,
    pub client: Client,
    pub endpoint: Endpoint,
    pub api_key: String,
}

pub fn fixture() -> Result<Option<Fixture>> {
    let Some(stack) = DockerStack::start(&[])? else {
        return Ok(None);
    };
    let (id, client) = stack.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    let key = stack
        .stack
        .rt
        .block_on(stack.stack.store.create_api_key(&stack.owner.id, "sync"))?;
    let endpoint = endpoint(&stack, &id, key.secret.expose());
    Ok(Some(Fixture {
        stack,
        id,
        client,
        endpoint,
        api_key: key.secret.expose().to_owned(),
    }))
}

pub fn endpoint(stack: &DockerStack, id: &SandboxId, api_key: &str) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port: stack.stack.ssh_port,
        sandbox: id.as_str().to_owned(),
        credential: Credential::Password(warren_sync::Secret::new(api_key)),
        host_keys: vec![stack.stack.host_key.clone()],
    }
}

/// A host key that is not the gateway's.
pub fn other_key() -> russh::keys::PublicKey {
    let dir = tempfile::TempDir::new().unwrap();
    warren_keys::load_or_generate_host_key(&dir.path().join("other"))
        .unwrap()
        .public_key()
        .clone()
}

/// Runs a seed and collects its events.
pub fn seed(f: &Fixture, options: &SeedOptions) -> Result<(SeedSummary, Vec<Event>)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = f
        .stack
        .stack
        .rt
        .block_on(warren_sync::seed(&f.endpoint, options, tx))?;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Ok((summary, events))
}

/// A deterministic pseudo-random byte stream (xorshift), so files differ.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid C string and two timespecs; AT_SYMLINK_NOFOLLOW touches links themselves.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// A project: `dirs × per_dir` small files of varied sizes and modes, one large
/// file, links in and out of the tree, and a `.gitignore`d build directory.
pub fn make_tree(root: &Path, dirs: usize, per_dir: usize, large: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("src/mod{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_dir {
            let p = dir.join(format!("file{i:03}.rs"));
            std::fs::write(&p, bytes((d * 1000 + i) as u64, (i * 37) % 3000)).unwrap();
            if i % 10 == 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            set_mtime(&p, 1_600_000_000 + (d * 1000 + i) as i64);
        }
    }
    std::fs::write(root.join("big.bin"), bytes(7, large)).unwrap();
    std::fs::write(root.join(".gitignore"), "target/\n*.log\n").unwrap();
    std::fs::create_dir_all(root.join("target/debug")).unwrap();
    std::fs::write(root.join("target/debug/huge"), b"not sent").unwrap();
    std::fs::write(root.join("noise.log"), b"not sent").unwrap();
    std::fs::write(root.join("secret.env"), b"excluded").unwrap();
    std::os::unix::fs::symlink("src/mod00/file001.rs", root.join("link-in")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", root.join("src/link-out")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-abs")).unwrap();
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    File { mode: u32, mtime: i64, sha: String },
    Dir { mode: u32 },
    Link(String),
}

/// Everything under `root` as sync should keep it.
pub fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let node = if meta.file_type().is_symlink() {
                Node::Link(
                    std::fs::read_link(&path)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                Node::Dir {
                    mode: meta.mode() & 0o7777,
                }
            } else {
                Node::File {
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                    sha: crate::util::sha256_file(&path).unwrap(),
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// The sandbox's `dir`, fetched with `tar` through ssh and unpacked locally.
pub fn fetch(c: &Client, dir: &str) -> Result<tempfile::TempDir> {
    let out = tempfile::TempDir::new()?;
    let t = c.target();
    let script = format!(
        "{} {}@{} 'tar -C {dir} -cf - .' | tar -C {} -xpf -",
        c.ssh_command_line(),
        t.user,
        t.host,
        out.path().display()
    );
    Cmd::shell(&script)
        .timeout(Duration::from_secs(300))
        .run()?
        .success()?;
    Ok(out)
}

pub fn options(source: &Path, target: &str) -> SeedOptions {
    let mut o = SeedOptions::new(source, target);
    o.excludes = vec!["*.env".into()];
    o
}

impl Fixture {
    /// A shell command as the sandbox user.
    pub fn user(&self, script: &str) -> Result<()> {
        self.client.exec(script).run()?.success()?;
        Ok(())
    }

    /// A shell command as root in the container.
    pub fn root(&self, script: &str) -> Result<()> {
        docker_ok(&[
            "exec",
            "-u",
            "0",
            &format!("warren-{}", self.id),
            "sh",
            "-c",
            script,
        ])?;
        Ok(())
    }

    /// Starts a mirror in the background; its events are collected.
    pub fn mirror(&self, options: MirrorOptions) -> Mirror {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        self.stack.stack.rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                seen.lock().unwrap().push(e);
            }
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let endpoint = self.endpoint.clone();
        let task = self.stack.stack.rt.spawn(async move {
            warren_sync::mirror(&endpoint, &options, tx, async {
                let _ = stop_rx.await;
            })
            .await
        });
        Mirror {
            events,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

pub struct Mirror {
    pub events: Arc<Mutex<Vec<Event>>>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), warren_sync::SyncError>>>,
}

impl Mirror {
    pub fn warned(&self, what: &[&str]) -> bool {
        self.events.lock().unwrap().iter().any(
            |e| matches!(e, Event::Warning { message } if what.iter().all(|w| message.contains(w))),
        )
    }

    pub fn warnings(&self) -> String {
        let events = self.events.lock().unwrap();
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Warning { message } => Some(format!("{message:?}")),
                _ => None,
            })
            .take(60)
            .collect();
        lines.join("\n")
    }

    pub fn stop(mut self, rt: &tokio::runtime::Runtime) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
        }
    }
}
