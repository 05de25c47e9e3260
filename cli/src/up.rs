//! `warren up`: everything on one machine — the gateway (SSH, runners' endpoint,
//! HTTP API), a local runner (Docker when an engine answers, else processes), SQLite
//! in the data directory, a first admin and a first sandbox.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use warren_gateway::recordings::RecordingPolicy;
use warren_gateway::server::{Gateway, Listen, Options};
use warren_runner::backend::docker::{DockerDefaults, PoolSize, ensure_static};
use warren_runner::backend::process::find_agent_bin;
use warren_runner::service::{BackendKind, Runner, RunnerOptions};
use warren_runner::state::DataDir;
use warren_store::{SandboxState, Store, StoreError, User};

use crate::client::Config;
use crate::local_dial::LocalDialer;

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub ssh: SocketAddr,
    pub http: SocketAddr,
    pub runners: SocketAddr,
    pub agent_bin: Option<PathBuf>,
    pub process_backend: bool,
    /// Stop sandboxes idle this long unless their create request says otherwise.
    pub idle_timeout: Duration,
    /// How often the idle reaper looks.
    pub reap_interval: Duration,
    /// Started sandboxes of the default image kept waiting (Docker; 0: none).
    pub pool_size: usize,
    /// What the pool may grow to while creates come in bursts.
    pub pool_max: usize,
    /// How many pool members (and spare networks) are started at once.
    pub pool_fill_parallel: usize,
    /// The disk quota of sandboxes whose create names none, in MiB (Docker).
    pub disk_mb: u64,
    /// What all sandboxes' disk quotas may add up to (default: the free disk).
    pub capacity_disk_mb: Option<u64>,
    /// Whether devcontainer.json builds are built (`--allow-builds`).
    pub allow_builds: bool,
    /// How long a built image nobody used is kept (`--keep-unused-builds-s`).
    pub keep_unused_builds: Duration,
    /// What the gateway records (`<data-dir>/recordings`).
    pub recording: RecordingPolicy,
    /// The SSH front door's bounds: logins per address, and what logged-in
    /// accounts and sandboxes hold.
    pub admission: warren_gateway::ssh::AdmissionArgs,
}

const ADMIN: &str = "admin";

pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let data = &opts.data_dir;
    eprintln!("warren: data in {}", data.display());
    let store = Store::open_in_data_dir(data)
        .await
        .with_context(|| format!("opening the store in {}", data.display()))?;
    // Logins to the local runner's sandboxes skip the tunnel (see local_dial).
    let dialer = Arc::new(LocalDialer::default());
    let gateway = Gateway::bind_with(
        store.clone(),
        data,
        Listen {
            ssh: opts.ssh,
            runners: opts.runners,
            http: opts.http,
            public_host: None,
        },
        Options {
            recording: opts.recording.clone(),
            preauth: warren_gateway::server::Preauth {
                ssh: opts.admission.preauth(),
                ..Default::default()
            },
            sessions: opts.admission.limits(),
            dialer: Some(dialer.clone()),
            ..Options::default()
        },
    )
    .await?;
    let (runner_addr, fingerprint) = gateway.runner_endpoint();
    let http_url = format!("http://{}", gateway.http_addr);
    let ssh_addr = gateway.ssh_addr;
    let hub = gateway.hub.clone();
    dialer.set_tunnel(warren_gateway::dial::TunnelDialer::new(hub.clone()));
    let signer = gateway.signer.clone();

    let (admin, api_key) = admin_account(&store, data).await?;
    let keys = register_local_keys(&store, &admin).await;

    // The local runner, joined once and remembered in <data>/runner.
    let runner_data = DataDir::open(&data.join("runner"))?;
    if runner_data.load_identity().is_err() {
        let token = store.create_join_token(Duration::from_secs(300)).await?;
        warren_runner::tunnel::join(
            &runner_data,
            &runner_addr.to_string(),
            token.secret.expose(),
            &fingerprint,
            "local",
        )
        .await
        .context("joining the local runner")?;
    }
    let runner = local_runner(&opts, &runner_data).await?;
    let (identity, _) = runner_data.load_identity()?;
    let runner_id = warren_store::RunnerId::parse(&identity.runner_id)?;
    dialer.set_local(runner_id.clone(), runner.backend().clone());
    let runner_kind = runner.describe();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runner_task = {
        let runner_data = runner_data.clone();
        tokio::spawn(async move { runner.run(&runner_data, stop_rx).await })
    };
    let mut stop_gateway = stop_tx.subscribe();
    let gateway_task = tokio::spawn(gateway.serve(async move {
        let _ = stop_gateway.changed().await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !hub.is_online(&runner_id) {
        if tokio::time::Instant::now() > deadline {
            bail!("the local runner did not come online");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config = Config {
        url: http_url.clone(),
        api_key: api_key.clone(),
        ca_cert: None,
    };
    let saved = save_cli_config(&config);
    let api = config.client()?;
    eprintln!("warren: preparing a first sandbox…");
    let (sandbox, mut token) = first_sandbox(&api, &store).await?;
    if token.is_none() && keys.is_empty() {
        // A later start with no key to log in with: a fresh token for the line below.
        let id = warren_keys::SandboxId::parse(&sandbox)?;
        let minted = signer.mint(&id, warren_keys::Scope::Ssh, Duration::from_secs(24 * 3600));
        token = Some(minted.expose().to_owned());
    }

    println!("Warren is up.");
    println!(
        "  HTTP API      {http_url}   (admin API key in {})",
        data.join("admin-api-key").display()
    );
    println!("  SSH gateway   {ssh_addr}   host key {fingerprint}");
    println!("  runner        local ({runner_kind})");
    if let Some(path) = saved {
        println!(
            "  CLI           logged in ({}); try `warren list`",
            path.display()
        );
    }
    if keys.is_empty() {
        println!("  SSH keys      none found in ~/.ssh; the line below carries a sandbox token");
    } else {
        println!("  SSH keys      {} registered for {ADMIN}", keys.join(", "));
    }
    println!("First sandbox {sandbox}; reach it with:");
    let port = ssh_addr.port();
    let host = ssh_addr.ip();
    match (&token, keys.is_empty()) {
        (Some(token), true) => println!("ssh -p {port} '{sandbox}#{token}@{host}'"),
        _ => println!("ssh -p {port} {sandbox}@{host}"),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    wait_for_stop().await;
    eprintln!("warren: stopping");
    let _ = stop_tx.send(true);
    let _ = runner_task.await;
    let _ = gateway_task.await;
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The admin account and its API key: made on the first start (key printed to
/// `<data>/admin-api-key`, 0600), read back on later ones.
async fn admin_account(store: &Store, data: &Path) -> anyhow::Result<(User, String)> {
    let key_file = data.join("admin-api-key");
    let admin = match store.get_user_by_name(ADMIN).await {
        Ok(user) => user,
        Err(StoreError::NotFound(_)) => store.create_user(ADMIN, true).await?,
        Err(e) => return Err(e.into()),
    };
    if let Ok(key) = std::fs::read_to_string(&key_file) {
        return Ok((admin, key.trim().to_owned()));
    }
    let created = store.create_api_key(&admin.id, "warren up").await?;
    let key = created.secret.expose().to_owned();
    write_secret(&key_file, &key)?;
    eprintln!(
        "warren: admin API key (also in {}): {key}",
        key_file.display()
    );
    Ok((admin, key))
}

fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(format!("{value}\n").as_bytes())?;
    Ok(())
}

/// Registers the public keys in ~/.ssh for the admin (once each), so the printed
/// `ssh` line works with the keys ssh offers by default. Returns their file names.
async fn register_local_keys(store: &Store, admin: &User) -> Vec<String> {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for name in ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"] {
        let path = home.join(".ssh").join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(key) = russh::keys::PublicKey::from_openssh(text.trim()) else {
            continue;
        };
        match store.add_ssh_key(&admin.id, name, &key).await {
            Ok(_) | Err(StoreError::Conflict(_)) => names.push(name.to_owned()),
            Err(e) => eprintln!("warren: could not register {}: {e}", path.display()),
        }
    }
    names
}

/// The local runner: hardened Docker containers, or local processes only when asked
/// for with `--process-backend`. Never a silent fall back to no isolation.
async fn local_runner(opts: &UpOptions, data: &DataDir) -> anyhow::Result<Runner> {
    let mut options = RunnerOptions {
        backend: BackendKind::Process,
        listen_dir: None,
        agent_bin: find_agent_bin(opts.agent_bin.as_deref())?,
        docker: DockerDefaults {
            idle_timeout: opts.idle_timeout,
            pool: vec![PoolSize {
                image: DockerDefaults::default().image,
                min: opts.pool_size,
                max: opts.pool_max.max(opts.pool_size),
            }],
            pool_fill_parallel: opts.pool_fill_parallel,
            disk_mb: opts.disk_mb,
            allow_builds: opts.allow_builds,
            keep_unused_builds: opts.keep_unused_builds,
            ..DockerDefaults::default()
        },
        reap_interval: opts.reap_interval,
        capacity: warren_runner::service::CapacityLimits {
            disk_mb: opts.capacity_disk_mb,
            ..Default::default()
        },
        // Persistent sessions live until their shell exits or the sandbox stops.
        session_detached_ttl: None,
    };
    if opts.process_backend {
        eprintln!(
            "warren: WARNING: --process-backend: sandboxes are local processes with NO ISOLATION"
        );
        return Runner::start(data, options).await;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "warren up runs sandboxes as Docker containers, which needs root and a Docker \
             engine; run it as root (sudo), or pass --process-backend to run sandboxes as \
             local processes with NO ISOLATION"
        );
    }
    if let Err(e) = ensure_static(&options.agent_bin) {
        options.agent_bin = build_static_agent().with_context(|| {
            format!(
                "{e:#}; build the static agent with `scripts/build-static-agent` (it prints \
                 its path) and pass it: `warren up --agent-bin PATH`"
            )
        })?;
    }
    options.backend = BackendKind::Docker;
    let runner = Runner::start(data, options).await.context(
        "no Docker backend; start the Docker engine, or pass --process-backend to run \
         sandboxes as local processes with NO ISOLATION",
    )?;
    if let warren_runner::backend::Backend::Docker(docker) = &**runner.backend() {
        ensure_base_image(docker).await;
    }
    Ok(runner)
}

/// Runs `scripts/build-static-agent` from the checkout this binary was built in (or
/// the current directory's) and returns the path it prints.
fn build_static_agent() -> anyhow::Result<PathBuf> {
    let script = find_in_checkout("scripts/build-static-agent")
        .context("scripts/build-static-agent is not at hand")?;
    let root = script
        .parent()
        .and_then(Path::parent)
        .context("the script has no checkout")?;
    eprintln!("warren: building the static agent (scripts/build-static-agent)…");
    let out = std::process::Command::new(&script)
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/build-static-agent")?;
    if !out.status.success() {
        bail!("scripts/build-static-agent failed");
    }
    let path = root.join(String::from_utf8_lossy(&out.stdout).trim());
    ensure_static(&path)?;
    Ok(path)
}

/// `relative` under the current directory or the executable's, or one of their parents.
fn find_in_checkout(relative: &str) -> Option<PathBuf> {
    [std::env::current_dir().ok(), std::env::current_exe().ok()]
        .into_iter()
        .flatten()
        .flat_map(|p| p.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .map(|p| p.join(relative))
        .find(|p| p.is_file())
}

/// Builds the default image offline (images/build-base, with its progress) when it
/// is missing and the script is at hand.
async fn ensure_base_image(docker: &warren_runner::backend::docker::DockerBackend) {
    let image = DockerDefaults::default().image;
    if docker.docker().inspect_image(&image).await.is_ok() {
        return;
    }
    let script = find_in_checkout("images/build-base");
    let Some(script) = script else {
        eprintln!("warren: WARNING: {image} is missing and images/build-base was not found");
        return;
    };
    eprintln!("warren: building {image} offline (a few minutes, once)…");
    let status = tokio::process::Command::new(&script)
        .stdout(std::process::Stdio::null())
        .status()
        .await;
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!(
            "warren: WARNING: {} failed; sandboxes need an image",
            script.display()
        );
    }
}

/// Saves the CLI's login unless one for another installation exists.
fn save_cli_config(config: &Config) -> Option<PathBuf> {
    match Config::load() {
        Ok(existing) if existing.url != config.url => None,
        _ => config.save().ok(),
    }
}

/// The admin's first sandbox: made on the first start, started again if stopped.
/// Returns its id and, when just made, its token.
async fn first_sandbox(
    api: &warren_client::Client,
    store: &Store,
) -> anyhow::Result<(String, Option<String>)> {
    let list = api
        .list_sandboxes(&warren_api::ListSandboxes::default())
        .await?;
    let existing = list
        .sandboxes
        .into_iter()
        .find(|s| s.state != "deleted" && s.state != "failed");
    if let Some(sandbox) = existing {
        let id = sandbox.id;
        if sandbox.state == "running" && api.keepalive(&id).await.is_err() {
            // Recorded as running, but the runner no longer has it (process
            // sandboxes end with `warren up`): record that, then start it again.
            let sid = warren_keys::SandboxId::parse(&id)?;
            store
                .set_sandbox_state(&sid, SandboxState::Stopped, "runner restarted")
                .await?;
            api.start_sandbox(&id).await?;
        } else if sandbox.state == "stopped" {
            api.start_sandbox(&id).await?;
        }
        return Ok((id, None));
    }
    let created = api
        .create_sandbox(&warren_api::CreateSandbox::default())
        .await
        .context("creating the first sandbox")?;
    Ok((created.sandbox.id, Some(created.token)))
}
