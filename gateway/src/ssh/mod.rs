//! The SSH front door: users log in with a sandbox id as the user name and are
//! relayed to that sandbox's agent, or with their account name: a jump host for
//! `ssh -J`, and the account console ([`console`]) for commands.
//!
//! Not here: the runner tunnel ([`crate::tunnel`]) that carries the bytes to agents,
//! and the state ([`warren_store`]).

mod channel_audit;
pub mod console;
mod login;
mod pipe;
mod relay;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::server::Config;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;

use crate::guard::{Admission, Preauth, PreauthGate, run_until};
pub use crate::guard::{
    AdmissionArgs, FailureLimiter, PreauthLimits, SessionBounds, SessionLimits,
    limiter_failures_total,
};
pub use upstream::{AgentDialer, AgentStream, DialError, Dialing, WriteBehind};

/// The live logins, where they used to be.
pub use crate::lifecycle::live;

/// What every user connection shares: the lifecycle (who may do what, the store,
/// the token signer, the live logins, the recordings), and what only the front door
/// needs.
pub struct FrontDoor {
    /// The core every login and console command goes through.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// How a sandbox's agent is reached.
    pub dialer: Arc<dyn AgentDialer>,
    pub limiter: FailureLimiter,
    /// What logged-in accounts and sandboxes hold, against their bounds.
    pub bounds: Arc<SessionBounds>,
    /// Every connection starts with a PROXY protocol v2 header (behind a TCP load
    /// balancer; `guard::proxy`), whose client address counts, not the peer's.
    pub proxy_protocol: bool,
}

/// russh settings for the users' side: keepalives instead of an inactivity cut,
/// consumption-based windows (a slow user cannot make the gateway buffer), a delay
/// on every refused login.
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
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 65536,
        max_auth_attempts: 6,
        nodelay: true,
        window_adjust_on_consume: true,
        ..Config::default()
    }
}

/// Accepts users until the listener fails; each connection runs on its own task.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    door: Arc<FrontDoor>,
) -> std::io::Result<()> {
    serve_with(listener, config, door, PreauthLimits::FRONT_DOOR).await
}

/// [`serve`] with `limits` on connections that have not logged in yet.
pub async fn serve_with(
    listener: TcpListener,
    config: Config,
    door: Arc<FrontDoor>,
    limits: PreauthLimits,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let gate = PreauthGate::with_backlog(
        limits.per_address,
        limits.total,
        limits.backlog_per_address,
        limits.backlog,
        "SSH front door",
    );
    // Connections still sending their PROXY header: as many as may wait to log in.
    let headers = Arc::new(tokio::sync::Semaphore::new(limits.total + limits.backlog));
    loop {
        let (mut stream, balancer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if door.proxy_protocol {
            let Ok(permit) = headers.clone().try_acquire_owned() else {
                tracing::debug!(%balancer, "too many PROXY headers pending; closed");
                continue;
            };
            let (config, door, gate) = (config.clone(), door.clone(), gate.clone());
            tokio::spawn(async move {
                let timeout = crate::guard::proxy::HEADER_TIMEOUT.min(limits.login_grace);
                let read = crate::guard::proxy::read_client_addr(&mut stream, balancer, timeout);
                match read.await {
                    Ok(peer) => {
                        drop(permit);
                        admit(stream, peer, config, door, &gate, limits);
                    }
                    Err(e) => tracing::info!(%balancer, "connection closed: {e}"),
                }
            });
        } else {
            admit(
                stream,
                balancer,
                config.clone(),
                door.clone(),
                &gate,
                limits,
            );
        }
    }
}

/// A connection from `peer` (the client, as the PROXY header named it if there
/// was one): the failed-login limiter and the pre-auth gate, then the login on a
/// task of its own.
fn admit(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    door: Arc<FrontDoor>,
    gate: &Arc<PreauthGate>,
    limits: PreauthLimits,
) {
    if !door.limiter.allows(peer.ip()) {
        tracing::info!(%peer, "too many failed logins from this address; dropped");
        return;
    }
    // Logged (rate-limited) by the gate; closing the socket is the answer.
    let Ok(admission) = gate.admit_or_queue(peer.ip()) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + limits.login_grace;
    tokio::spawn(async move {
        let slot = match admission {
            Admission::Now(slot) => slot,
            // The client has sent its version line (or nothing) and waits for
            // ours, as it would in a listen backlog; the grace time runs.
            Admission::Queued(ticket) => match ticket.wait(deadline).await {
                Some(slot) => slot,
                None => {
                    return tracing::debug!(%peer, "no place within the grace time; closed");
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (preauth, logged_in) = Preauth::new(slot);
        let handler = relay::Connection::new(door, peer, preauth);
        let grace = limits.login_grace;
        run_until(config, stream, handler, logged_in, deadline, grace, peer).await;
    });
}

/// Raises this process's open-file limit to its hard limit (every connection, its
/// agent leg and the store need descriptors), logs what it got, and returns it.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot read the open-file limit");
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(
                error = %io::Error::last_os_error(), open_files = before,
                "cannot raise the open-file limit; keeping it"
            );
            return Some(before);
        }
    }
    let now = limit.rlim_cur;
    let wanted = PreauthLimits::FRONT_DOOR.total + PreauthLimits::FRONT_DOOR.backlog + 1024;
    if usize::try_from(now).is_ok_and(|n| n < wanted) {
        tracing::warn!(
            open_files = now,
            "the open-file limit is low for a gateway (raise the hard limit: ulimit -Hn)"
        );
    } else {
        tracing::info!(open_files = now, was = before, "open-file limit");
    }
    Some(now)
}

/// The local address a listener is bound to, for logs and tests.
pub fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
