//! The runner ⇄ gateway tunnel, end to end: the gateway's `RunnerHub` in-process, the
//! real `warren-runner` binary (process backend, real `warren-agent`), and the real
//! OpenSSH client through the tunnel. Every child is killed on drop (its whole
//! process group) and every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpListener;
use warren_gateway::tunnel::{RunnerHub, TunnelError};
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response};
use warren_store::{NewRunner, RunnerId, RunnerState, Store};
use warren_tests::{ChildGuard, Client, Target, bin_path};

/// The gateway's runner hub alone, on its own store and host key: what this file
/// tests is the tunnel under the gateway (joins, reconnects, a hub restart), not a
/// gateway; every stack with a front door comes from `warren_tests::stack`.
struct HubOnly {
    dir: TempDir,
    store: Store,
    hub: Option<RunnerHub>,
    addr: SocketAddr,
}

impl HubOnly {
    async fn start() -> HubOnly {
        let dir = TempDir::new().unwrap();
        let store = Store::open_in_data_dir(dir.path()).await.unwrap();
        let key = warren_keys::load_or_generate_host_key(&dir.path().join("host_key")).unwrap();
        let hub = RunnerHub::bind(store.clone(), key, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = hub.local_addr();
        HubOnly {
            dir,
            store,
            hub: Some(hub),
            addr,
        }
    }

    fn hub(&self) -> &RunnerHub {
        self.hub.as_ref().unwrap()
    }

    /// Stops the hub and starts a new one on the same port, key and database.
    async fn restart(&mut self) {
        self.hub.take().unwrap().shutdown().await;
        let key =
            warren_keys::load_or_generate_host_key(&self.dir.path().join("host_key")).unwrap();
        self.hub = Some(
            RunnerHub::bind(self.store.clone(), key, self.addr)
                .await
                .unwrap(),
        );
    }

    async fn token(&self, ttl: Duration) -> String {
        let t = self.store.create_join_token(ttl).await.unwrap();
        t.secret.expose().to_owned()
    }

    async fn state(&self, id: &RunnerId) -> RunnerState {
        self.store.get_runner(id).await.unwrap().state
    }
}

fn runner_cmd(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin_path("warren-runner"));
    cmd.args(args)
        .env("WARREN_AGENT_BIN", bin_path("warren-agent"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Runs `warren-runner join`; returns (success, stdout, stderr).
async fn join(
    gw: &HubOnly,
    data: &Path,
    token: &str,
    fingerprint: &str,
    name: &str,
) -> (bool, String, String) {
    let gateway = gw.addr.to_string();
    let mut cmd = tokio::process::Command::from(runner_cmd(&[
        "join",
        "--gateway",
        &gateway,
        "--token",
        token,
        "--fingerprint",
        fingerprint,
        "--name",
        name,
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    cmd.kill_on_drop(true).process_group(0);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("join timed out")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn runner_id(data: &Path) -> RunnerId {
    let identity: warren_runner::state::Identity =
        serde_json::from_slice(&std::fs::read(data.join("runner.json")).unwrap()).unwrap();
    RunnerId::parse(&identity.runner_id).unwrap()
}

fn run_runner(data: &Path, listen: &Path) -> ChildGuard {
    let mut cmd = runner_cmd(&[
        "run",
        "--backend",
        "process",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-dir",
        listen.to_str().unwrap(),
    ]);
    ChildGuard::spawn(cmd.stdout(Stdio::null())).unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_reused_expired_tokens_and_wrong_fingerprints() {
    let gw = HubOnly::start().await;
    let fp = gw.hub().fingerprint().to_owned();
    let dirs: Vec<TempDir> = (0..4).map(|_| TempDir::new().unwrap()).collect();

    // A wrong fingerprint is refused before the token is sent, so it stays usable.
    let token = gw.token(Duration::from_secs(600)).await;
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (ok, _, err) = join(&gw, dirs[0].path(), &token, wrong, "r1").await;
    assert!(!ok, "joined despite a wrong fingerprint");
    assert!(err.contains("refusing to join"), "{err}");
    assert!(!dirs[0].path().join("runner.json").exists());

    let (ok, out, err) = join(&gw, dirs[0].path(), &token, &fp, "r1").await;
    assert!(ok, "join failed: {err}");
    assert!(out.contains("joined as runner"), "{out}");
    let id = runner_id(dirs[0].path());
    let runner = gw.store.get_runner(&id).await.unwrap();
    assert_eq!(runner.name, "r1");
    assert!(gw.hub().join_command_hint(&token, "gw:2223").contains(&fp));

    // The same token again.
    let (ok, _, err) = join(&gw, dirs[1].path(), &token, &fp, "r2").await;
    assert!(!ok);
    assert!(err.contains("join token already used"), "{err}");

    // An expired token.
    let expired = gw.token(Duration::ZERO).await;
    let (ok, _, err) = join(&gw, dirs[2].path(), &expired, &fp, "r3").await;
    assert!(!ok);
    assert!(err.contains("join token expired"), "{err}");

    // An unknown token.
    let (ok, _, err) = join(&gw, dirs[3].path(), "wj_nonsense", &fp, "r4").await;
    assert!(!ok);
    assert!(err.contains("join token unknown"), "{err}");
    assert_eq!(gw.store.list_runners().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_join_tokens_gets_the_source_refused() {
    let gw = HubOnly::start().await;
    let fp = gw.hub().fingerprint().to_owned();
    let dirs: Vec<TempDir> = (0..31).map(|_| TempDir::new().unwrap()).collect();
    // 30 wrong guesses, 10 at once (each refusal is held back a second; the runner
    // port serves at most 10 unauthenticated connections per address)…
    for wave in dirs[..30].chunks(10) {
        let guesses = wave
            .iter()
            .map(|d| join(&gw, d.path(), "wj_guess", &fp, "g"));
        for (ok, _, err) in futures_util::future::join_all(guesses).await {
            assert!(!ok && err.contains("join token unknown"), "{err}");
        }
    }
    // …and then even a valid token from that address is turned away for a while.
    let token = gw.token(Duration::from_secs(600)).await;
    let (ok, _, err) = join(&gw, dirs[30].path(), &token, &fp, "late").await;
    assert!(!ok, "joined from an address that kept guessing");
    assert!(!err.contains("joined as runner"), "{err}");
    assert!(gw.store.list_runners().await.unwrap().is_empty());
}

/// Accepts one TCP connection and pipes it into an agent stream through the tunnel.
fn pipe_once(listener: Arc<TcpListener>, hub_stream: warren_gateway::tunnel::TunnelStream) {
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut stream = hub_stream;
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
    });
}

async fn ssh_echo(client: &Arc<Client>) -> (bool, String) {
    let client = client.clone();
    tokio::task::spawn_blocking(move || {
        let out = client
            .exec("echo hi")
            .timeout(Duration::from_secs(30))
            .run()
            .unwrap();
        (out.status.success(), out.stdout_trimmed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_carries_ssh_survives_gateway_restart_and_notices_a_dead_runner() {
    let mut gw = HubOnly::start().await;
    let fp = gw.hub().fingerprint().to_owned();
    let data = TempDir::new().unwrap();
    let listen = TempDir::new().unwrap();
    let token = gw.token(Duration::from_secs(600)).await;
    let (ok, _, err) = join(&gw, data.path(), &token, &fp, "r1").await;
    assert!(ok, "join failed: {err}");
    let id = runner_id(data.path());

    // A runner that never connected is offline, at once.
    let ghost_key = warren_keys::load_or_generate_host_key(&data.path().join("ghost")).unwrap();
    let ghost = gw
        .store
        .register_runner(&NewRunner {
            name: "ghost".into(),
            public_key: ghost_key.public_key().clone(),
            labels: vec![],
            capacity: 1,
        })
        .await
        .unwrap();
    let sandbox = SandboxId::generate();
    let started = Instant::now();
    let err = gw
        .hub()
        .open_agent_stream(&ghost.id, &sandbox, gw.addr)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TunnelError::RunnerOffline), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    let mut runner = run_runner(data.path(), listen.path());
    wait_for("runner online", Duration::from_secs(20), async || {
        gw.hub().is_online(&id)
    })
    .await;
    assert_eq!(gw.state(&id).await, RunnerState::Online);

    // No such sandbox yet.
    let err = gw
        .hub()
        .open_agent_stream(&id, &sandbox, gw.addr)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TunnelError::UnknownSandbox), "{err}");

    // Create a sandbox whose agent accepts the client's key, and SSH through.
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let port = listener.local_addr().unwrap().port();
    let client = Arc::new(
        Client::new(Target::new("127.0.0.1", port, "sandbox"))
            .unwrap()
            .with_key(),
    );
    let signer = TokenSigner::generate().unwrap();
    let created = gw
        .hub()
        .control(
            &id,
            &Request::Create {
                sandbox: sandbox.clone(),
                token_key: signer.verifier().to_base64(),
                authorized_keys: vec![client.public_key().trim().to_owned()],
                spec: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(created, Response::Ok);
    let listed = gw.hub().control(&id, &Request::List).await.unwrap();
    let Response::Sandboxes { sandboxes } = listed else {
        panic!("{listed:?}")
    };
    assert_eq!(sandboxes.len(), 1);
    assert!(sandboxes[0].running);

    let stream = gw
        .hub()
        .open_agent_stream(&id, &sandbox, gw.addr)
        .await
        .unwrap();
    pipe_once(listener.clone(), stream);
    let (ok, out) = ssh_echo(&client).await;
    assert!(ok && out == "hi", "ssh through the tunnel: {ok} {out:?}");

    // The gateway restarts: the runner comes back by itself, and SSH works again.
    gw.restart().await;
    assert!(!gw.hub().is_online(&id));
    wait_for("runner reconnected", Duration::from_secs(10), async || {
        gw.hub().is_online(&id)
    })
    .await;
    let stream = gw
        .hub()
        .open_agent_stream(&id, &sandbox, gw.addr)
        .await
        .unwrap();
    pipe_once(listener.clone(), stream);
    let (ok, out) = ssh_echo(&client).await;
    assert!(ok && out == "hi", "ssh after gateway restart: {ok} {out:?}");

    // Stop and delete through control.
    let stopped = gw
        .hub()
        .control(
            &id,
            &Request::Stop {
                sandbox: sandbox.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(stopped, Response::Ok);
    let err = gw
        .hub()
        .open_agent_stream(&id, &sandbox, gw.addr)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TunnelError::UnknownSandbox), "{err}");
    let deleted = gw
        .hub()
        .control(
            &id,
            &Request::Delete {
                sandbox: sandbox.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(deleted, Response::Ok);
    assert!(!sandbox_dir(data.path(), &sandbox).exists());

    // The runner dies: the gateway marks it offline, and new streams fail at once.
    runner.kill(Duration::ZERO);
    wait_for("runner offline", Duration::from_secs(10), async || {
        gw.state(&id).await == RunnerState::Offline
    })
    .await;
    let started = Instant::now();
    let err = gw
        .hub()
        .open_agent_stream(&id, &sandbox, gw.addr)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TunnelError::RunnerOffline), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

fn sandbox_dir(data: &Path, sandbox: &SandboxId) -> PathBuf {
    data.join("sandboxes").join(sandbox.as_str())
}
