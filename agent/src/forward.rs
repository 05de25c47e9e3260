//! Port and agent forwarding: `ssh -L` (direct-tcpip), `ssh -R` (tcpip-forward and
//! forwarded-tcpip) and `ssh -A` (an SSH_AUTH_SOCK socket whose connections become
//! auth-agent channels back to the client).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::server::{Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;

use crate::pump::splice;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses for a host name without asking NSS, which a static binary cannot use:
/// literals and `localhost` are resolved here, anything else by the resolver.
async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") || host.is_empty() {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    Ok(tokio::net::lookup_host((host, port)).await?.collect())
}

async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for host");
    for addr in resolve(host, port).await? {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

/// `ssh -L`: connects to `host:port` from inside the sandbox, then accepts the channel.
pub fn open_direct_tcpip(
    channel: Channel<Msg>,
    handle: Handle,
    host: String,
    port: u32,
    reply: russh::server::ChannelOpenHandle,
) {
    tokio::spawn(async move {
        let Ok(port) = u16::try_from(port) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        match connect(&host, port).await {
            Ok(stream) => {
                reply.accept().await;
                splice(channel, handle, stream).await;
            }
            Err(e) => {
                tracing::debug!(%host, port, error = %e, "direct-tcpip connect failed");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
    });
}

/// A listening `ssh -R` port; dropping it stops the listener.
pub struct RemoteForward {
    task: JoinHandle<()>,
}

impl Drop for RemoteForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `ssh -R`: listens on loopback inside the sandbox (like sshd's `GatewayPorts no`)
/// and opens a forwarded-tcpip channel to the client per connection. Returns the
/// bound port (the chosen one when `port` is 0).
pub async fn listen_remote(
    handle: Handle,
    address: &str,
    port: u32,
    may_bind_privileged: bool,
) -> io::Result<(u32, RemoteForward)> {
    let port = u16::try_from(port).map_err(|_| io::Error::other("port out of range"))?;
    if port != 0 && port < 1024 && !may_bind_privileged {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "privileged port",
        ));
    }
    let ip = if address == "::1" {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
    let bound = u32::from(listener.local_addr()?.port());
    let address = address.to_owned();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                // Out of descriptors, most likely: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            let address = address.clone();
            tokio::spawn(async move {
                match handle
                    .channel_open_forwarded_tcpip(
                        address,
                        bound,
                        peer.ip().to_string(),
                        u32::from(peer.port()),
                    )
                    .await
                {
                    Ok(channel) => splice(channel, handle, stream).await,
                    Err(e) => tracing::debug!(error = %e, "client refused forwarded-tcpip"),
                }
            });
        }
    });
    Ok((bound, RemoteForward { task }))
}

/// The SSH_AUTH_SOCK of one connection: a socket in a private directory owned by the
/// sandbox user. Removed when dropped.
pub struct AgentSocket {
    dir: PathBuf,
    /// The directory itself, to remove the socket through (the user owns the
    /// directory and could put a link where its path was).
    dir_fd: std::fs::File,
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AgentSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the socket; `owner` is the sandbox user's uid/gid when the agent
    /// switches users, so that only that user can reach the forwarded agent.
    pub fn create(handle: Handle, owner: Option<(u32, u32)>) -> io::Result<AgentSocket> {
        let dir = private_dir()?;
        let path = dir.join("agent.sock");
        // Everything through a descriptor of the directory just made: its path is
        // never resolved again, so no rename or link can redirect a bind or chown.
        let dir_fd = std::fs::File::from(open_dir_nofollow(&dir)?);
        let via_fd = PathBuf::from(format!("/proc/self/fd/{}/agent.sock", dir_fd.as_raw_fd()));
        let listener = UnixListener::bind(&via_fd)?;
        if let Some((uid, gid)) = owner {
            // The socket first, then the directory: once the user owns the
            // directory, they could swap the socket for a link.
            let name = c"agent.sock";
            // SAFETY: fchownat on a directory fd we own and a NUL-terminated name.
            if unsafe {
                libc::fchownat(
                    dir_fd.as_raw_fd(),
                    name.as_ptr(),
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            } < 0
            {
                return Err(io::Error::last_os_error());
            }
            std::os::unix::fs::fchown(&dir_fd, Some(uid), Some(gid))?;
        }
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    match handle.channel_open_agent().await {
                        Ok(channel) => splice(channel, handle, stream).await,
                        Err(e) => tracing::debug!(error = %e, "client refused agent channel"),
                    }
                });
            }
        });
        Ok(AgentSocket {
            dir,
            dir_fd,
            path,
            task,
        })
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.task.abort();
        // SAFETY: unlinkat on a directory fd we own and a NUL-terminated name.
        unsafe { libc::unlinkat(self.dir_fd.as_raw_fd(), c"agent.sock".as_ptr(), 0) };
        // rmdir never follows a link; at worst it removes an empty directory the
        // user put there.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Opens a directory without following a link at its path.
fn open_dir_nofollow(dir: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    Ok(file.into())
}

/// A fresh 0700 directory under `/tmp` with an unguessable name. Always `/tmp`
/// (sticky, so nobody can rename what root made there), never `$TMPDIR`: that
/// comes from the create request's env, which the sandbox's tenant chooses.
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = PathBuf::from("/tmp");
    for _ in 0..8 {
        let mut random = [0u8; 8];
        getrandom(&mut random)?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = base.join(format!("warren-ssh-{name}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a private directory"))
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() == Some(buf.len()) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
