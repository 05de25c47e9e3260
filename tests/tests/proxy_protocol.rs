//! The SSH front door behind HAProxy with `send-proxy-v2` (the configuration
//! docs/gateway-tier.md shows): a real OpenSSH login through it works, the audit
//! trail records the client's address (127.0.0.7 here), not HAProxy's, and a
//! connection that goes around HAProxy (no header) is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use warren_gateway::server::Options;
use warren_tests::stack::{Stack, run};
use warren_tests::util::wait_for;
use warren_tests::{ChildGuard, Client, Target};

/// The HAProxy configuration of docs/gateway-tier.md, with the test's ports.
fn haproxy_config(front: u16, gateways: &[u16]) -> String {
    let mut config = format!(
        "global\n    log stderr format raw local0 warning\n\n\
         defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    \
         timeout client 1h\n    timeout server 1h\n\n\
         frontend warren_ssh\n    bind 127.0.0.1:{front}\n    default_backend warren_gateways\n\n\
         backend warren_gateways\n    balance leastconn\n"
    );
    for (i, port) in gateways.iter().enumerate() {
        config.push_str(&format!(
            "    server gw{i} 127.0.0.1:{port} send-proxy-v2\n"
        ));
    }
    config
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn logins_through_haproxy_are_audited_with_the_clients_address() -> Result<()> {
    let haproxy = which("haproxy");
    if haproxy.is_none() && std::env::var_os("CI").is_none() {
        eprintln!("note: haproxy is not installed (scripts/test installs it); skipped");
        return Ok(());
    }
    let haproxy = haproxy.context("haproxy is not installed, but CI is set")?;
    let stack = Stack::builder()
        .gateway(Options {
            proxy_protocol: true,
            ..Options::default()
        })
        .start()?;
    let runner = stack.runner("r1")?;
    let client = Client::new(Target::new("127.0.0.1", stack.ssh_port, "x"))?;
    let alice = stack.user("alice", &client)?;
    let id = stack.sandbox(&runner, &alice)?;

    let front = free_port()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(front, &[stack.ssh_port]))?;
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _haproxy = ChildGuard::spawn(&mut cmd)?;
    wait_for("haproxy to listen", Duration::from_secs(10), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", front)).is_ok())
    })?;

    // Through HAProxy, from 127.0.0.7.
    let through = client
        .clone()
        .with_target(Target::new("127.0.0.1", front, id.as_str()))
        .with_option("BindAddress=127.0.0.7");
    let out = run(&through, "echo through haproxy")?;
    ensure!(
        out.code() == Some(0) && out.stdout_trimmed() == "through haproxy",
        "{out}"
    );
    let client_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    let sessions = stack.rt.block_on(stack.store.list_ssh_sessions(&id))?;
    ensure!(
        sessions.len() == 1 && sessions[0].source_addr.ip() == client_ip,
        "the audit trail has {:?}, not the client's 127.0.0.7",
        sessions.iter().map(|s| s.source_addr).collect::<Vec<_>>()
    );

    // Around HAProxy: no header, no login, and no long wait for one.
    let around = client.clone().with_target(stack.target(&id));
    let started = Instant::now();
    let out = around
        .exec("echo around")
        .timeout(Duration::from_secs(30))
        .run()?;
    ensure!(
        out.code() == Some(255) && !out.stdout_str().contains("around"),
        "a connection without a PROXY header got in:\n{out}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.exists())
}
