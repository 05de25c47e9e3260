//! The listening side: russh's configuration, the TCP or unix-socket listener, one
//! task per connection, and a graceful stop on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use russh::server::Config;
use russh::{MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::Authenticator;
use crate::handler::Connection;
use crate::process::Launch;
use crate::user::SandboxUser;

/// Where the agent listens: a TCP address, or a unix socket the runner reaches.
#[derive(Debug, Clone)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(ListenAddr::Unix(path.into()));
        }
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(s.into()));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither HOST:PORT nor unix:/path"))
    }
}

/// Which variables a client may set with `env` requests: LANG, LC_*, TERM, COLORTERM and what the
/// operator allows (exact names, or prefixes ending in `*`, like sshd's AcceptEnv).
#[derive(Debug, Clone)]
pub struct EnvPolicy {
    patterns: Vec<String>,
}

impl EnvPolicy {
    pub fn new(extra: &[String]) -> EnvPolicy {
        let mut patterns: Vec<String> = ["LANG", "LC_*", "TERM", "COLORTERM"]
            .map(String::from)
            .into();
        patterns.extend(extra.iter().filter(|p| !p.is_empty()).cloned());
        EnvPolicy { patterns }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }
}

/// What every connection shares.
pub struct Agent {
    pub auth: Authenticator,
    pub user: SandboxUser,
    /// True when the agent is root and sessions must switch to the sandbox user.
    pub switch_user: bool,
    pub workdir: PathBuf,
    pub env_policy: EnvPolicy,
    /// Variables every session gets (the sandbox's environment).
    pub session_env: Vec<(String, String)>,
    /// Persistent sessions (`<sandbox-id>+<name>` logins), which outlive connections.
    pub sessions: Arc<crate::persistent::Sessions>,
}

impl Agent {
    pub fn launch(&self) -> Launch<'_> {
        Launch {
            user: &self.user,
            switch_user: self.switch_user,
            workdir: &self.workdir,
            env: &[],
        }
    }

    /// Owner for files the agent makes on the user's behalf (terminals, sockets).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.switch_user.then_some((self.user.uid, self.user.gid))
    }

    /// Ports below 1024 only for root sessions, as sshd does.
    pub fn may_bind_privileged(&self) -> bool {
        self.user.uid == 0
    }
}

/// russh settings, tuned: no inactivity cut (keepalives instead), larger windows for
/// throughput, TCP_NODELAY for keystrokes, a delay on every refused login.
pub fn ssh_config(host_key: russh::keys::PrivateKey) -> Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    methods.push(MethodKind::None);
    Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Warren_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_secs(1),
        // OpenSSH probes with "none" first; that probe need not be slowed.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 65536,
        channel_buffer_size: 64,
        max_auth_attempts: 6,
        nodelay: true,
        // Our russh patch: windows re-open as programs consume input (see pump.rs).
        window_adjust_on_consume: true,
        ..Config::default()
    }
}

/// [`ssh_config`], and with `allow_unencrypted` the `none` cipher and MAC are
/// accepted too, listed last. Only for the unix socket the runner gives the agent:
/// the gateway's connection arrives there through the runner's encrypted,
/// authenticated tunnel, so the gateway offers `none` first and the bytes are not
/// encrypted a second time (one encryption at the gateway and one decryption here,
/// per byte). The client's preference decides, and OpenSSH (a user's own client in
/// jump mode) never offers `none`, so it still gets a real cipher; the algorithm
/// lists are signed with the host key in the exchange, so no one in between can
/// strip them down to `none`.
pub fn ssh_config_with(host_key: russh::keys::PrivateKey, allow_unencrypted: bool) -> Config {
    let mut config = ssh_config(host_key);
    if allow_unencrypted {
        let mut ciphers = config.preferred.cipher.to_vec();
        ciphers.push(russh::cipher::NONE);
        let mut macs = config.preferred.mac.to_vec();
        macs.push(russh::mac::NONE);
        config.preferred.cipher = ciphers.into();
        config.preferred.mac = macs.into();
    }
    config
}

/// Accepts connections until SIGTERM or SIGINT, then asks open connections to close
/// and waits a moment for them.
pub async fn serve(listen: ListenAddr, config: Config, agent: Agent) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let agent = Arc::new(agent);
    let mut connections = JoinSet::new();
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stop = shutdown_signal();
    tokio::pin!(stop);

    let listener = Listener::bind(&listen).await?;
    // The one line on stdout: tests and the runner read the bound address from it.
    println!("listening on {}", listener.describe());
    tracing::info!(address = %listener.describe(), sandbox = %agent.auth.sandbox, "agent ready");

    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Like sshd's MaxStartups: a flood of logins cannot pile up.
                    let Ok(slot) = unauthenticated.clone().try_acquire_owned() else {
                        tracing::warn!(peer = ?peer.map(|p| p.0), "too many unauthenticated connections; dropped");
                        continue;
                    };
                    let authenticated = Arc::new(AtomicBool::new(false));
                    let handler = Connection::new(agent.clone(), peer, authenticated.clone(), slot);
                    connections.spawn(run_connection(
                        config.clone(),
                        stream,
                        handler,
                        authenticated,
                        stop_tx.subscribe(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    tracing::info!(open = connections.len(), "shutting down");
    agent.sessions.hang_up_all();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    listener.cleanup();
    Ok(())
}

/// Runs one connection; on shutdown tells the client why it is being dropped.
async fn run_connection(
    config: Arc<Config>,
    stream: Box<dyn StreamBox>,
    handler: Connection,
    authenticated: Arc<AtomicBool>,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) {
    // The version exchange happens here, off the accept loop, so a silent client
    // cannot hold up others.
    let running = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        russh::server::run_stream(config, stream, handler),
    )
    .await
    {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => return tracing::debug!(error = %e, "handshake failed"),
        Err(_) => return tracing::debug!("handshake timed out"),
    };
    let handle = running.handle();
    tokio::pin!(running);
    let grace = tokio::time::sleep(LOGIN_GRACE);
    tokio::pin!(grace);
    let reason = loop {
        tokio::select! {
            result = &mut running => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut grace, if !grace.is_elapsed() => {
                if !authenticated.load(Ordering::Acquire) {
                    break "no login within the grace time";
                }
            }
            _ = stop.recv() => break "the sandbox agent is shutting down",
        }
    };
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            reason.into(),
            String::new(),
        )
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(3), running).await;
}

/// How long a connection may take to log in (sshd's LoginGraceTime).
const LOGIN_GRACE: Duration = Duration::from_secs(120);
/// Connections that have not logged in yet, at most (sshd's MaxStartups).
const MAX_UNAUTHENTICATED: usize = 32;

/// How long a client may take to send its SSH version line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    async fn bind(listen: &ListenAddr) -> anyhow::Result<Listener> {
        Ok(match listen {
            ListenAddr::Tcp(addr) => Listener::Tcp(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            ListenAddr::Unix(path) => {
                // A socket left by an earlier run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("cannot listen on {}", path.display()))?;
                Listener::Unix(listener, path.clone())
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// A connection, with its client and server addresses when it is TCP.
    async fn accept(
        &self,
    ) -> std::io::Result<(Box<dyn StreamBox>, Option<(SocketAddr, SocketAddr)>)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                stream.set_nodelay(true)?;
                let local = stream.local_addr()?;
                Ok((Box::new(stream), Some((peer, local))))
            }
            Listener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                Ok((Box::new(stream), None))
            }
        }
    }

    fn cleanup(&self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A boxed connection stream of either kind.
pub trait StreamBox: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: Stream> StreamBox for T {}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we simply run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_policy_takes_exact_names_and_prefixes() {
        let policy = EnvPolicy::new(&["FOO".into(), "GIT_*".into()]);
        assert!(policy.allows("LANG"));
        assert!(policy.allows("LC_ALL"));
        assert!(policy.allows("FOO"));
        assert!(policy.allows("GIT_AUTHOR_NAME"));
        assert!(!policy.allows("FOOBAR"));
        assert!(!policy.allows("LD_PRELOAD"));
        assert!(!policy.allows("PATH"));
    }

    #[test]
    #[allow(clippy::expect_used)]
    fn unencrypted_only_when_allowed_and_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key =
            warren_keys::load_or_generate_host_key(&dir.path().join("host_key")).expect("host key");
        let plain = ssh_config_with(key.clone(), false);
        assert!(!plain.preferred.cipher.contains(&russh::cipher::NONE));
        assert!(!plain.preferred.mac.contains(&russh::mac::NONE));
        let open = ssh_config_with(key, true);
        assert_eq!(open.preferred.cipher.last(), Some(&russh::cipher::NONE));
        assert_eq!(open.preferred.mac.last(), Some(&russh::mac::NONE));
        assert_eq!(
            open.preferred.cipher.first(),
            plain.preferred.cipher.first()
        );
        assert_eq!(
            open.preferred.cipher.len(),
            plain.preferred.cipher.len() + 1
        );
    }

    #[test]
    fn listen_addresses_parse() {
        assert!(matches!(
            "127.0.0.1:0".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(matches!(
            "unix:/run/a.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix(_))
        ));
        assert!(matches!(
            "/run/a.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix(_))
        ));
        assert!("nonsense".parse::<ListenAddr>().is_err());
    }
}
