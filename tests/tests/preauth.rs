//! Connections that have not logged in yet are bounded (issue 11): a whole gateway
//! in-process (`Stack::builder().bind()`, a 3 s login grace time, 10 per address and 40
//! in all in the handshake, 20 per address and 60 in all waiting for a place),
//! flooded with clients that send `SSH-2.0-x` and nothing else. The gateway holds no
//! more than the bounds (its sockets counted in /proc), drops them after the grace
//! time (the waiting ones too), and meanwhile a real login from another source
//! address works. A burst of real logins from one address past its bound waits its
//! turn and all get in (issue 30). All of 127.0.0.0/8 is loopback: each flood
//! address is bound before connecting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use warren_gateway::server::{Options, Preauth};
use warren_gateway::ssh::PreauthLimits;
use warren_store::RunnerId;
use warren_tests::stack::{BoundGateway, Stack};

const LIMITS: PreauthLimits = PreauthLimits {
    login_grace: Duration::from_secs(3),
    per_address: 10,
    total: 40,
    backlog_per_address: 20,
    backlog: 60,
};
/// The runner port has no backlog.
const RUNNER_LIMITS: PreauthLimits = PreauthLimits {
    backlog_per_address: 0,
    backlog: 0,
    ..LIMITS
};
const FLOOD: usize = 300;

async fn start() -> BoundGateway {
    let preauth = Preauth {
        ssh: LIMITS,
        runners: RUNNER_LIMITS,
    };
    Stack::builder()
        .gateway(Options {
            preauth,
            ..Options::default()
        })
        .bind()
        .await
        .unwrap()
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sockets this process holds that were accepted on `listener`: the gateway's side of
/// connections to it. Matched on the whole local address, not the port alone: a
/// client bound to another loopback address may be given the listener's port number
/// as its own ephemeral port.
fn held_on(listener: SocketAddr) -> usize {
    let IpAddr::V4(ip) = listener.ip() else {
        panic!("the test listens on IPv4")
    };
    // /proc/net/tcp prints the address as the raw network-order word, in hex.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        listener.port()
    );
    let inodes: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let state = f[3];
            let inode: u64 = f[9].parse().unwrap_or(0);
            f[1] == local && state != "0A" && inodes.contains(&inode)
        })
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What the flood's clients saw.
#[derive(Default)]
struct Seen {
    /// Got the server's version line (the gateway took the connection).
    served: AtomicUsize,
    /// Closed by the gateway without a word (dropped at accept, or after waiting
    /// for a place in vain).
    dropped: AtomicUsize,
}

struct Flood {
    seen: Arc<Seen>,
    /// Per client: whether it was served, and how long the gateway kept it.
    clients: JoinSet<(bool, Duration)>,
}

impl Flood {
    /// `per_source` clients from each of `sources`, each sending only a version line.
    fn start(to: SocketAddr, sources: &[IpAddr], per_source: usize) -> Flood {
        let seen = Arc::new(Seen::default());
        let mut clients = JoinSet::new();
        for &source in sources {
            for _ in 0..per_source {
                let seen = seen.clone();
                clients.spawn(async move {
                    let mut stream = connect_from(source, to).await;
                    let connected = Instant::now();
                    let _ = stream.write_all(b"SSH-2.0-x\r\n").await;
                    let mut served = false;
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if !served {
                            assert!(buf[..n].starts_with(b"SSH-2.0-"));
                            served = true;
                            seen.served.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    if !served {
                        seen.dropped.fetch_add(1, Ordering::SeqCst);
                    }
                    (served, connected.elapsed())
                });
            }
        }
        Flood { seen, clients }
    }

    /// Waits until every client but the `waiting` was either served or dropped;
    /// returns the served.
    async fn settled(&self, clients: usize, waiting: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let served = self.seen.served.load(Ordering::SeqCst);
            let dropped = self.seen.dropped.load(Ordering::SeqCst);
            if served + dropped == clients - waiting {
                return served;
            }
            assert!(
                Instant::now() < deadline,
                "{served} + {dropped} of {clients}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the gateway to close every client; returns how long it kept the
    /// served ones (shortest, longest), and the longest it kept any.
    async fn closed(mut self) -> (Duration, Duration, Duration) {
        let (mut shortest, mut longest, mut any) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
        let all = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(done) = self.clients.join_next().await {
                let (served, kept) = done.unwrap();
                any = any.max(kept);
                if served {
                    shortest = shortest.min(kept);
                    longest = longest.max(kept);
                }
            }
        })
        .await;
        assert!(all.is_ok(), "the gateway kept flood connections open");
        (shortest, longest, any)
    }
}

/// Asserts the gateway kept its served flood clients for the grace time, and no
/// client much longer (the disconnect, then the cut a second later), the ones that
/// waited for a place included.
fn kept_for_the_grace_time((shortest, longest, any): (Duration, Duration, Duration), what: &str) {
    eprintln!(
        "{what}: served connections were closed after {shortest:?} to {longest:?}, every \
         connection within {any:?}"
    );
    assert!(
        shortest >= LIMITS.login_grace - Duration::from_millis(200),
        "{what}: closed too early ({shortest:?})"
    );
    assert!(
        longest.max(any) <= LIMITS.login_grace + Duration::from_millis(2500),
        "{what}: closed too late ({longest:?}, {any:?})"
    );
}

async fn wait_held(listener: SocketAddr, want: usize) -> Duration {
    let started = Instant::now();
    while held_on(listener) != want {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway holds {} connections on {listener}, not {want}",
            held_on(listener)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Takes any host key; keeps the reason the server gave for disconnecting.
struct Client {
    told: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                *self.told.lock().unwrap() = Some(info.message);
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// An SSH client from `source`, through the handshake, and where the reason for a
/// disconnect will be.
async fn ssh_client(
    source: IpAddr,
    to: SocketAddr,
) -> (client::Handle<Client>, Arc<Mutex<Option<String>>>) {
    let stream = connect_from(source, to).await;
    let told = Arc::new(Mutex::new(None));
    let handler = Client { told: told.clone() };
    let connecting = client::connect_stream(Arc::new(client::Config::default()), stream, handler);
    let handle = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("SSH handshake timed out")
        .expect("SSH handshake");
    (handle, told)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_front_door_is_bounded_and_a_real_user_gets_in() {
    let gw = start().await;
    let listener = gw.ssh;
    let user = gw.store.create_user("alice", false).await.unwrap();
    let api_key = gw.store.create_api_key(&user.id, "test").await.unwrap();
    let fds_before = open_fds();
    assert_eq!(held_on(listener), 0);

    // 300 from one address: 10 are served, 20 wait for a place, the rest are
    // closed at once.
    let flood = Flood::start(gw.ssh, &[loopback(2)], FLOOD);
    let served = flood.settled(FLOOD, LIMITS.backlog_per_address).await;
    let held = held_on(listener);
    eprintln!(
        "front door, {FLOOD} clients from one address: {served} served, the gateway holds \
         {held} sockets; this process has {} open files (before: {fds_before}; the served \
         clients' own sockets included)",
        open_fds()
    );
    assert_eq!(served, LIMITS.per_address);
    assert_eq!(held, LIMITS.per_address + LIMITS.backlog_per_address);

    // Meanwhile, from another address: a full login (an account and its API key).
    let started = Instant::now();
    let (mut alice, _) = ssh_client(loopback(1), gw.ssh).await;
    let auth = alice
        .authenticate_password("alice", api_key.secret.expose())
        .await
        .unwrap();
    assert!(auth.success(), "alice's login was refused during the flood");
    eprintln!(
        "front door: alice logged in during the flood in {:?}",
        started.elapsed()
    );

    // Her login gave her place back: 10 more from her address are all served, the
    // 11th waits.
    let more = Flood::start(gw.ssh, &[loopback(1)], LIMITS.per_address + 1);
    assert_eq!(
        more.settled(LIMITS.per_address + 1, 1).await,
        LIMITS.per_address
    );
    assert_eq!(
        held_on(listener),
        2 * LIMITS.per_address + LIMITS.backlog_per_address + 1 + 1
    );

    kept_for_the_grace_time(flood.closed().await, "front door flood");
    kept_for_the_grace_time(more.closed().await, "front door, alice's address");
    // Only alice is left, logged in past the grace time.
    wait_held(listener, 1).await;
    assert!(!alice.is_closed());
    alice.send_keepalive(true).await.unwrap();

    // 300 from 30 addresses: the total bounds hold (40 served, 60 waiting); all
    // places are free again.
    let sources: Vec<IpAddr> = (10..40).map(loopback).collect();
    let flood = Flood::start(gw.ssh, &sources, FLOOD / sources.len());
    let served = flood.settled(FLOOD, LIMITS.backlog).await;
    let held = held_on(listener);
    eprintln!(
        "front door, {FLOOD} clients from {} addresses: {served} served, the gateway holds \
         {held} sockets (alice's included)",
        sources.len()
    );
    assert_eq!(served, LIMITS.total);
    assert_eq!(held, LIMITS.total + LIMITS.backlog + 1);
    kept_for_the_grace_time(flood.closed().await, "front door, many addresses");
    wait_held(listener, 1).await;
    assert!(!alice.is_closed());

    let _ = alice
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let drained = wait_held(listener, 0).await;
    eprintln!(
        "front door: all closed {drained:?} after alice left; {} open files (before: \
         {fds_before})",
        open_fds()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_runner_port_is_bounded_and_a_runner_still_joins() {
    let gw = start().await;
    let listener = gw.runners;
    assert_eq!(held_on(listener), 0);

    let flood = Flood::start(gw.runners, &[loopback(2)], FLOOD);
    let served = flood.settled(FLOOD, 0).await;
    let held = held_on(listener);
    eprintln!("runner port, {FLOOD} clients from one address: {served} served, {held} held");
    assert_eq!(served, LIMITS.per_address);
    assert_eq!(held, LIMITS.per_address);

    // A password login as the join user proves nothing (the token is checked by the
    // join itself): still unauthenticated, dropped at the grace time.
    let (mut idle_join, told) = ssh_client(loopback(3), gw.runners).await;
    let since = Instant::now();
    let auth = idle_join
        .authenticate_password(warren_runner::protocol::JOIN_USER, "wj_not-a-token")
        .await
        .unwrap();
    assert!(auth.success());

    // Meanwhile a real runner joins from another address.
    let data = TempDir::new().unwrap();
    let data = warren_runner::state::DataDir::open(data.path()).unwrap();
    let token = gw
        .store
        .create_join_token(Duration::from_secs(60))
        .await
        .unwrap();
    let identity = warren_runner::tunnel::join(
        &data,
        &gw.runners.to_string(),
        token.secret.expose(),
        &gw.fingerprint,
        "during-flood",
    )
    .await
    .expect("a runner could not join during the flood");
    assert!(RunnerId::parse(&identity.runner_id).is_ok());

    kept_for_the_grace_time(flood.closed().await, "runner port flood");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle_join.is_closed() {
        assert!(
            Instant::now() < deadline,
            "an idle join login outlived the grace time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let told = told.lock().unwrap().clone();
    eprintln!(
        "runner port: an idle join login was closed after {:?}, told {told:?}",
        since.elapsed()
    );
    assert_eq!(told.as_deref(), Some("no login within 3 s"));
    assert!(since.elapsed() <= LIMITS.login_grace + Duration::from_millis(2500));
    wait_held(listener, 0).await;
}

/// Twice the per-address bound and a half of real logins at once from one address:
/// those past the bound wait for a place, and every one gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_from_one_address_waits_its_turn() {
    let gw = start().await;
    let user = gw.store.create_user("alice", false).await.unwrap();
    let api_key = gw.store.create_api_key(&user.id, "test").await.unwrap();
    let burst = 2 * LIMITS.per_address + LIMITS.per_address / 2;
    assert!(burst <= LIMITS.per_address + LIMITS.backlog_per_address);
    let started = Instant::now();
    let mut logins = JoinSet::new();
    for _ in 0..burst {
        let secret = api_key.secret.expose().to_owned();
        let to = gw.ssh;
        logins.spawn(async move {
            let (mut client, _) = ssh_client(loopback(5), to).await;
            let auth = client.authenticate_password("alice", secret).await.unwrap();
            assert!(auth.success());
            // Kept (not awaited: a handle is a future of the session's end).
            Some(client)
        });
    }
    let mut clients = Vec::new();
    while let Some(client) = logins.join_next().await {
        clients.push(client.expect("a login of the burst failed"));
    }
    eprintln!(
        "{burst} logins at once from one address (bound {}): all in after {:?}",
        LIMITS.per_address,
        started.elapsed()
    );
    assert_eq!(clients.len(), burst);
    assert!(started.elapsed() < LIMITS.login_grace);
}

#[tokio::test]
async fn the_plain_http_api_still_answers() {
    let gw = start().await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A bad API key is refused (the peer address reaches the handlers).
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(
            b"GET /v1/sandboxes HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer wk_nope\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test]
async fn a_silent_http_client_is_dropped_after_the_header_read_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let timeout = Duration::from_secs(1);
    tokio::spawn(warren_gateway::api::tls::serve_plain_with(
        listener, router, timeout,
    ));
    // Nothing at all, and half a request line: both closed after the timeout.
    for sent in [&b""[..], b"GET / HT"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        stream.write_all(sent).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "a silent HTTP client was kept");
        let kept = started.elapsed();
        let sent = String::from_utf8_lossy(sent);
        eprintln!("HTTP: a client that sent {sent:?} was closed after {kept:?}");
        assert!(kept >= timeout - Duration::from_millis(100), "{kept:?}");
    }
    // A whole request is answered.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}
