//! Forwarding as users ask for it: local and remote ports (and cancelling one),
//! the SSH agent, and X11 (refused).

use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::client::Client;
use crate::process::{Cmd, Output, Running};
use crate::util::{EchoServer, free_port, random_bytes, tcp_roundtrip, wait_until};

/// `ssh -N -L port:127.0.0.1:echo` carries a TCP conversation to a server beside the
/// SSH server, several connections at once.
pub fn local_forward(c: &Client) -> Result<()> {
    let echo = EchoServer::start()?;
    let port = free_port()?;
    let spec = format!("{port}:127.0.0.1:{}", echo.port());
    let mut ssh = c
        .ssh(&["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec], "")
        .spawn()?;
    let listening = wait_until(Duration::from_secs(15), || {
        ssh.try_wait().is_none() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !listening {
        bail!("ssh -L never listened:\n{}", ssh.kill());
    }
    let handles: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || -> Result<()> {
                let payload = random_bytes(512 * 1024)?;
                let reply = tcp_roundtrip(port, &payload, Duration::from_secs(30))?;
                ensure!(
                    reply == payload,
                    "the echo through -L came back different ({} of {} bytes)",
                    reply.len(),
                    payload.len()
                );
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("panic"))??;
    }
    let out = ssh.kill();
    ensure!(
        !out.stderr_str().contains("open failed"),
        "ssh reported a failed channel:\n{out}"
    );
    Ok(())
}

/// `ssh -R`: through a control connection, ask the server to listen (a chosen port and
/// port 0), reach a test server through it, then cancel and see the port close.
pub fn remote_forward_and_cancel(c: &Client) -> Result<()> {
    let echo = EchoServer::start()?;
    let ctl = c.dir().join("ctl.sock");
    let ctl_s = ctl.to_string_lossy().into_owned();
    let mut master = c.ssh(&["-M", "-S", &ctl_s, "-N"], "").spawn()?;
    if !wait_until(Duration::from_secs(15), || {
        ctl.exists() || master.try_wait().is_some()
    }) || !ctl.exists()
    {
        bail!("control master did not start:\n{}", master.kill());
    }
    let port = free_port()?;
    let spec = format!("{port}:127.0.0.1:{}", echo.port());
    c.ssh(&["-S", &ctl_s, "-O", "forward", "-R", &spec], "")
        .run()?
        .success()
        .context("-O forward -R")?;
    let payload = random_bytes(256 * 1024)?;
    let reply = tcp_roundtrip(port, &payload, Duration::from_secs(30))
        .context("connecting through the remote forward")?;
    ensure!(reply == payload, "echo through -R came back different");

    // Port 0: the server picks one and says which.
    let any = format!("0:127.0.0.1:{}", echo.port());
    let out = c
        .ssh(&["-S", &ctl_s, "-O", "forward", "-R", &any], "")
        .run()?
        .success()?;
    let allocated: u16 = out
        .stdout_trimmed()
        .parse()
        .with_context(|| format!("ssh should print the allocated port:\n{out}"))?;
    ensure!(allocated != 0, "allocated port 0:\n{out}");
    let reply = tcp_roundtrip(allocated, b"zero", Duration::from_secs(30))?;
    ensure!(reply == b"zero", "echo through the allocated port failed");

    c.ssh(&["-S", &ctl_s, "-O", "cancel", "-R", &spec], "")
        .run()?
        .success()
        .context("-O cancel -R")?;
    let closed = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    ensure!(closed, "port {port} still accepts connections after cancel");
    let _ = c.ssh(&["-S", &ctl_s, "-O", "exit"], "").run();
    let out = master.kill();
    ensure!(
        !out.stderr_str().contains("remote port forwarding failed"),
        "{out}"
    );
    Ok(())
}

/// `ssh -A` with a real ssh-agent: `ssh-add -l` in the session lists the key.
pub fn agent_forwarding(c: &Client) -> Result<()> {
    agent_forwarding_checked(c, true)
}

/// A real `ssh-agent` holding one fresh key, for `ssh -A`; killed when dropped.
pub struct ForwardedAgent {
    _agent: Running,
    sock: std::path::PathBuf,
    /// The key's SHA-256 fingerprint, as `ssh-add -l` prints it.
    pub fingerprint: String,
}

impl ForwardedAgent {
    /// Starts it in `c`'s directory.
    pub fn start(c: &Client) -> Result<ForwardedAgent> {
        let sock = c.dir().join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let agent = Cmd::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .timeout(Duration::from_secs(600))
            .spawn()?;
        if !wait_until(Duration::from_secs(10), || sock.exists()) {
            bail!("ssh-agent did not start:\n{}", agent.kill());
        }
        let key = c.dir().join("forwarded_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "forwarded-key", "-f"])
            .arg(&key)
            .run()?
            .success()?;
        Cmd::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock)
            .run()?
            .success()?;
        let fp = Cmd::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub"))
            .run()?
            .success()?;
        let fingerprint = fp
            .stdout_str()
            .split_whitespace()
            .nth(1)
            .context("fingerprint")?
            .to_owned();
        Ok(ForwardedAgent {
            _agent: agent,
            sock,
            fingerprint,
        })
    }

    /// `ssh -A <extra…> host command` with `c`, this agent forwarded.
    pub fn run(&self, c: &Client, extra: &[&str], command: &str) -> Result<Output> {
        let mut args = vec!["-A"];
        args.extend_from_slice(extra);
        c.ssh(&args, command)
            .env("SSH_AUTH_SOCK", &self.sock)
            .timeout(Duration::from_secs(120))
            .run()
    }
}

/// `ssh -A host command` with a real ssh-agent behind it: what the session saw.
pub fn with_forwarded_agent(c: &Client, command: &str) -> Result<Output> {
    ForwardedAgent::start(c)?.run(c, &[], command)
}

/// [`agent_forwarding`] for an image without `ssh-add` (`ssh_add` false): the
/// forwarded socket is there and answers.
pub fn agent_forwarding_checked(c: &Client, ssh_add: bool) -> Result<()> {
    let agent = ForwardedAgent::start(c)?;
    if !ssh_add {
        let out = agent.run(c, &[], r#"test -S "$SSH_AUTH_SOCK" && echo forwarded"#)?;
        ensure!(
            out.status.success() && out.stdout_trimmed() == "forwarded",
            "the session has no forwarded agent socket:\n{out}"
        );
        return Ok(());
    }
    let out = agent.run(c, &[], r#"test -S "$SSH_AUTH_SOCK" && ssh-add -l"#)?;
    let fingerprint = &agent.fingerprint;
    ensure!(
        out.status.success() && out.stdout_str().contains(fingerprint.as_str()),
        "ssh-add -l in the session should list {fingerprint}:\n{out}"
    );
    Ok(())
}

/// `ssh -X`: the server refuses X11 and the session carries on.
pub fn x11_refused(c: &Client) -> Result<()> {
    let out = c
        .ssh(&["-X"], "echo one; echo two")
        .env("DISPLAY", ":55")
        .run()?;
    ensure!(
        out.code() == Some(0) && out.stdout == b"one\ntwo\n",
        "the session should run normally after the X11 refusal:\n{out}"
    );
    ensure!(
        out.stderr_str().contains("X11 forwarding request failed"),
        "ssh should say `X11 forwarding request failed`:\n{out}"
    );
    Ok(())
}
