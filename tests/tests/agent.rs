//! The sandbox agent, end to end: a real `warren-agent serve` on loopback, driven by
//! the real OpenSSH `ssh`, `scp`, `sftp` and `rsync`, asserting what a user would see.
//!
//! The shared user sessions live in `warren_tests::scenarios` (they also run against
//! OpenSSH's sshd in `sshd_reference.rs`, which proves each scenario right); this file
//! adds what only the agent has: sandbox tokens, the env allow-list, privilege drop,
//! bounded memory and its refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use warren_keys::{Claims, SandboxId, Scope, TokenSigner};
use warren_tests::util::{self, current_user};
use warren_tests::{Agent, Client, Target, scenarios};

/// An agent with one key-authorized client, and the agent's workdir as scratch space.
fn agent_and_client() -> Result<(Agent, Client, String)> {
    let agent = Agent::start()?;
    let client = agent.client()?;
    let dir = agent.workdir().to_string_lossy().into_owned();
    Ok((agent, client, dir))
}

// ---------------------------------------------------------------- exec

#[test]
fn exec_exit_codes() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::exec_exit_codes(&c)
}

#[test]
fn exec_separates_stdout_and_stderr() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::stdout_stderr_separation(&c)
}

#[test]
fn exec_stdin_is_binary_safe() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::binary_stdin_roundtrip(&c)
}

#[test]
fn exec_tar_round_trip_eof_both_ways() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::tar_roundtrip(&c, &dir)
}

#[test]
fn exec_killed_by_signal_reports_exit_signal() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::exit_signal(&c)
}

#[test]
fn exec_large_output_with_bounded_agent_memory() -> Result<()> {
    let (agent, c, dir) = agent_and_client()?;
    // Warm up (first session, allocator arenas), then measure from here.
    c.exec("true").run()?.success()?;
    let baseline = agent.rss_kib().unwrap_or(0);
    let mut peak = baseline;
    scenarios::large_output(&c, &dir, 200 << 20, || {
        peak = peak.max(agent.rss_kib().unwrap_or(0));
    })?;
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("agent RSS: baseline {baseline} KiB, peak {peak} KiB during 200 MiB");
    ensure!(
        growth_mib < 64,
        "the agent's RSS grew by {growth_mib} MiB (from {baseline} to {peak} KiB) while \
         200 MiB went through a stalled client: output is being buffered without bound"
    );
    Ok(())
}

// ---------------------------------------------------------------- terminals

#[test]
fn pty_shell_tty_term_resize_ctrl_c_exit_status() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::pty_shell(&c)
}

#[test]
fn pty_exec_command() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::pty_exec(&c)
}

// ---------------------------------------------------------------- environment

#[test]
fn env_lang_and_lc_pass_others_dropped() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::env_requests(&c, false)
}

#[test]
fn env_allowed_by_operator_passes() -> Result<()> {
    let agent = Agent::builder().allow_env("FOO").start()?;
    let c = agent.client()?;
    scenarios::env_requests(&c, true)
}

#[test]
fn login_environment_is_the_sandbox_users() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    let me = current_user()?;
    scenarios::login_environment(&c, &me.name, &me.home, &me.shell)
}

#[test]
fn ssh_client_and_connection_name_both_ends() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::ssh_connection_env(&c)
}

// ---------------------------------------------------------------- files

#[test]
fn scp_100mb_both_ways() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::scp_both_ways(&c, &dir, 100 << 20)
}

#[test]
fn sftp_100mb_both_ways() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::sftp_both_ways(&c, &dir, 100 << 20)
}

#[test]
fn sftp_batch_operations() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::sftp_batch_ops(&c, &dir)
}

#[test]
fn scp_p_keeps_mtime_and_mode() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::scp_preserves_mtime_and_mode(&c, &dir)
}

#[test]
fn rsync_over_ssh_both_ways() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::rsync_both_ways(&c, &dir)
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk> {
        let dir = tempfile::TempDir::new()?;
        warren_tests::Cmd::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "warren-test-full",
            ])
            .arg(dir.path())
            .run()?
            .success()?;
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = warren_tests::Cmd::new("umount").arg(self.dir.path()).run();
    }
}

/// A full disk: sftp, scp and a command writing to it fail with the reason, and
/// the agent goes on serving (the space freed is usable again).
#[test]
fn a_full_disk_fails_writes_clearly_and_the_agent_lives_on() -> Result<()> {
    if !util::prerequisite(util::running_as_root(), "root (to mount a small tmpfs)")? {
        return Ok(());
    }
    let (_agent, c, dir) = agent_and_client()?;
    let disk = SmallDisk::mount("1m")?;
    let full = disk.path();
    let big = format!("{dir}/big");
    fs::write(&big, vec![7u8; 4 << 20])?;

    let out = c
        .sftp(&["-b", "-"])
        .stdin(format!("put {big} {full}/by-sftp\n"))
        .run()?;
    ensure!(
        out.code() != Some(0) && out.stderr_str().contains("by-sftp"),
        "sftp into a full disk:\n{out}"
    );
    let out = c
        .scp(&[], &[&big, &format!("{}:{full}/by-scp", c.target().host)])
        .run()?;
    // scp speaks SFTP: OpenSSH's client prints the status code only ("Failure"),
    // the same as against its own sftp-server.
    ensure!(
        out.code() != Some(0) && out.stderr_str().contains("by-scp"),
        "scp into a full disk:\n{out}"
    );
    let out = c
        .exec(&format!("head -c 4194304 /dev/zero > {full}/by-exec"))
        .run()?;
    ensure!(
        out.code() == Some(1) && out.stderr_str().contains("No space left on device"),
        "a command writing to a full disk:\n{out}"
    );

    let out = c
        .exec(&format!(
            "rm -f {full}/*; echo small > {full}/small; cat {full}/small"
        ))
        .run()?
        .success()?;
    ensure!(out.stdout_trimmed() == "small", "{out}");
    fs::write(format!("{dir}/small"), b"fits\n")?;
    c.sftp(&["-b", "-"])
        .stdin(format!("put {dir}/small {full}/by-sftp\n"))
        .run()?
        .success()
        .context("sftp after the disk was freed")?;
    ensure!(fs::read(format!("{full}/by-sftp"))? == b"fits\n");
    Ok(())
}

// ---------------------------------------------------------------- forwarding

#[test]
fn local_forward_to_a_tcp_server() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::local_forward(&c)
}

#[test]
fn remote_forward_and_cancel() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::remote_forward_and_cancel(&c)
}

#[test]
fn agent_forwarding_lists_the_key() -> Result<()> {
    let agent = Agent::start()?;
    // The runner marks the owner's keys so when the sandbox has `forward_agent`.
    let c = Client::new(agent.target())?;
    agent.authorize(&format!("warren-forward-agent {}", c.public_key().trim()))?;
    scenarios::agent_forwarding(&c)
}

/// Jump mode ends at the agent, so the agent itself refuses `ssh -A` to a key
/// without `warren-forward-agent` (a shared user's, or any key of a sandbox whose
/// owner did not turn it on) and to tokens without the scope, and says why.
#[test]
fn agent_forwarding_is_refused_without_the_grant() -> Result<()> {
    let (agent, key_client, _) = agent_and_client()?;
    let token_client = agent.token_client()?;
    for c in [&key_client, &token_client] {
        let out = scenarios::with_forwarded_agent(c, r#"echo "sock=${SSH_AUTH_SOCK:-none}""#)?;
        ensure!(
            out.status.success() && out.stdout_str().contains("sock=none"),
            "a session got an agent socket without the grant:\n{out}"
        );
        ensure!(
            out.stderr_str()
                .contains("agent forwarding is off for this sandbox"),
            "the client was not told why:\n{out}"
        );
    }
    Ok(())
}

#[test]
fn x11_is_refused_cleanly() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::x11_refused(&c)
}

#[test]
fn keepalives_are_answered() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    scenarios::keepalive(&c)
}

#[test]
fn vscode_style_background_process_survives() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    scenarios::background_survives_channel_close(&c, &dir)
}

// ---------------------------------------------------------------- authentication

#[test]
fn token_login_with_any_user_name() -> Result<()> {
    let agent = Agent::start()?;
    for user in [agent.sandbox_id().as_str(), "root", "somebody-else"] {
        let mut target = agent.target();
        target.user = user.to_owned();
        let c = Client::new(target)?.with_password(agent.token().expose())?;
        let out = c.exec("echo in").run()?;
        ensure!(
            out.code() == Some(0) && out.stdout == b"in\n",
            "a valid token should log in as user {user:?}:\n{out}"
        );
    }
    Ok(())
}

/// A token in the user name (`<id>#<token>`) logs in, and even at `RUST_LOG=debug`
/// the token never reaches the log. (russh logs through the `log` crate, which no
/// subscriber here bridges; its one user-name line is patched anyway.)
#[test]
fn a_token_in_the_user_name_never_reaches_the_debug_log() -> Result<()> {
    let agent = Agent::builder().env("RUST_LOG", "debug").start()?;
    let token = agent.token();
    let mut target = agent.target();
    target.user = format!("{}#{}", agent.sandbox_id(), token.expose());
    let out = Client::new(target)?.exec("echo in").run()?;
    ensure!(
        out.stdout == b"in\n",
        "the token in the user name did not log in:\n{out}"
    );
    let log = agent.log();
    ensure!(
        log.contains("DEBUG"),
        "the agent did not log at debug level"
    );
    let secret = token.expose().trim_start_matches("wst1.");
    ensure!(!log.contains(secret), "the token is in the debug log");
    Ok(())
}

#[test]
fn authorized_keys_are_reread_on_each_attempt() -> Result<()> {
    let agent = Agent::start()?;
    let c = Client::new(agent.target())?;
    let out = c.exec("true").run()?;
    ensure!(
        out.code() == Some(255),
        "an unlisted key must be refused:\n{out}"
    );
    agent.authorize(c.public_key())?;
    c.exec("true").run()?.success()?;
    Ok(())
}

/// What every refusal looks like to the user: ssh exits 255 saying "Permission denied".
fn assert_refused(c: &Client, what: &str) -> Result<()> {
    let started = Instant::now();
    let out = c.exec("echo should-not-run").run()?;
    ensure!(
        out.code() == Some(255)
            && out.stderr_str().contains("Permission denied")
            && out.stdout.is_empty(),
        "{what}: ssh should exit 255 with `Permission denied`:\n{out}"
    );
    eprintln!("{what}: refused after {:?}", started.elapsed());
    Ok(())
}

#[test]
fn refuses_a_wrong_token() -> Result<()> {
    let agent = Agent::start()?;
    let c = Client::new(agent.target())?.with_password("wst1.not-a-token")?;
    let started = Instant::now();
    assert_refused(&c, "garbage token")?;
    ensure!(
        started.elapsed() >= Duration::from_millis(800),
        "a failed password should be answered only after a delay (~1 s), took {:?}",
        started.elapsed()
    );
    // Well-formed, but signed by someone else.
    let stranger = TokenSigner::generate()?;
    let forged = stranger.mint(agent.sandbox_id(), Scope::Ssh, Duration::from_secs(600));
    let c = Client::new(agent.target())?.with_password(forged.expose())?;
    assert_refused(&c, "token from another signer")
}

#[test]
fn refuses_a_token_for_another_sandbox() -> Result<()> {
    let agent = Agent::start()?;
    let other = SandboxId::parse("sbx-someone-else")?;
    let token = agent
        .signer()
        .mint(&other, Scope::Ssh, Duration::from_secs(600));
    let c = Client::new(agent.target())?.with_password(token.expose())?;
    assert_refused(&c, "token for another sandbox")
}

#[test]
fn refuses_an_expired_token() -> Result<()> {
    let agent = Agent::start()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = agent.signer().mint_claims(&Claims {
        sandbox: agent.sandbox_id().clone(),
        scope: Scope::Ssh,
        expires_at: now - 60,
        nonce: [7; 16],
    });
    let c = Client::new(agent.target())?.with_password(token.expose())?;
    assert_refused(&c, "expired token")
}

#[test]
fn refuses_an_unknown_key() -> Result<()> {
    let agent = Agent::start()?;
    // Another key is listed; this one is not.
    let _listed = agent.client()?;
    let c = Client::new(agent.target())?;
    assert_refused(&c, "unknown key")
}

// ---------------------------------------------------------------- the process

#[test]
fn privilege_drop_to_the_sandbox_user() -> Result<()> {
    if !util::prerequisite(util::running_as_root(), "root, to start the agent as root")? {
        return Ok(());
    }
    let files = tempfile::Builder::new()
        .prefix("warren-passwd-")
        .tempdir()?;
    fs::set_permissions(files.path(), fs::Permissions::from_mode(0o755))?;
    let home = files.path().join("home-sbxuser");
    fs::create_dir(&home)?;
    chown(&home, Some(4242), Some(4242))?;
    let passwd = files.path().join("passwd");
    fs::write(
        &passwd,
        format!(
            "root:x:0:0:root:/root:/bin/sh\nsbxuser:x:4242:4242:Sandbox:{}:/bin/sh\n",
            home.display()
        ),
    )?;
    let group = files.path().join("group");
    fs::write(&group, "root:x:0:\nsbxuser:x:4242:\nextra:x:4343:sbxuser\n")?;
    let agent = Agent::builder()
        .user("sbxuser")
        .passwd_file(&passwd)
        .group_file(&group)
        .workdir(&home)
        .dir_mode(0o755)
        .start()?;
    let c = agent.client()?;
    let out = c.exec("id -u; id -g; id -G").run()?.success()?;
    ensure!(
        out.stdout_str() == "4242\n4242\n4242 4343\n",
        "sessions should run as uid 4242, gid 4242, groups 4242 4343:\n{out}"
    );
    scenarios::login_environment(&c, "sbxuser", &home, "/bin/sh".as_ref())?;
    // Files the session creates belong to the sandbox user, also over SFTP.
    let dir = home.to_string_lossy().into_owned();
    c.exec("touch made-by-exec").run()?.success()?;
    let local = c.dir().join("up.txt");
    fs::write(&local, "x")?;
    c.scp(
        &[],
        &[
            &local.to_string_lossy(),
            &c.remote(format!("{dir}/made-by-sftp")),
        ],
    )
    .run()?
    .success()?;
    let meta = fs::metadata(home.join("made-by-sftp"))?;
    ensure!(
        meta.uid() == 4242 && meta.gid() == 4242,
        "a file uploaded over SFTP is owned by {}:{}, not 4242:4242",
        meta.uid(),
        meta.gid()
    );
    let out = c
        .exec("stat -c '%u:%g' made-by-exec; ls /root >/dev/null 2>&1 || echo denied")
        .run()?;
    ensure!(
        out.stdout_str().starts_with("4242:4242\n") && out.stdout_str().contains("denied"),
        "exec should create files as 4242:4242 in the workdir and be unable to read root's files:\n{out}"
    );
    Ok(())
}

#[test]
fn sigterm_shuts_down_gracefully() -> Result<()> {
    let mut agent = Agent::start()?;
    let c = agent.client()?;
    c.exec("true").run()?.success()?;
    let started = Instant::now();
    let out = agent.stop().expect("agent was running");
    ensure!(
        out.status.success() && started.elapsed() < Duration::from_secs(2),
        "SIGTERM should stop the agent cleanly (exit 0) and quickly; got {} after {:?}",
        out.status,
        started.elapsed()
    );
    Ok(())
}

#[test]
fn host_key_is_generated_private() -> Result<()> {
    let agent = Agent::start()?;
    let mode = fs::metadata(agent.host_key_path())?.permissions().mode() & 0o777;
    ensure!(
        mode == 0o600,
        "generated host key has mode {mode:o}, want 600"
    );
    Ok(())
}

#[test]
fn listens_on_a_unix_socket() -> Result<()> {
    let agent = Agent::builder().listen("unix:{dir}/agent.sock").start()?;
    let sock = agent
        .socket_path()
        .with_context(|| format!("agent listens on {:?}", agent.listen_addr()))?;
    let proxy = format!(
        "ProxyCommand={} {}",
        env!("CARGO_BIN_EXE_unix-connect"),
        sock.display()
    );
    let c =
        Client::new(Target::new("sandbox", 22, agent.sandbox_id().as_str()))?.with_option(proxy);
    agent.authorize(c.public_key())?;
    let out = c.exec("echo over-unix").run()?;
    ensure!(
        out.code() == Some(0) && out.stdout == b"over-unix\n",
        "ssh through the unix socket:\n{out}"
    );
    Ok(())
}

#[test]
fn reaps_orphans_as_pid_1() -> Result<()> {
    if !util::prerequisite(util::running_as_root(), "root, for a PID namespace")? {
        return Ok(());
    }
    let agent = Agent::builder()
        .wrapper(["unshare", "--pid", "--fork", "--kill-child"])
        .start()?;
    let c = agent.client()?;
    // The subshell exits at once; its `sleep` is orphaned to PID 1 (the agent) and
    // exits shortly after. Leave several behind.
    c.exec("for i in 1 2 3 4 5; do (sleep 0.2 &); done; echo left")
        .run()?
        .success()?;
    thread::sleep(Duration::from_secs(2));
    let zombies = util::zombies(agent.pid());
    ensure!(
        zombies.is_empty(),
        "the agent as PID 1 left zombies behind: {zombies:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- found in review

#[test]
fn exec_command_line_is_passed_as_bytes() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (_agent, c, _) = agent_and_client()?;
    // Latin-1 'é' is not UTF-8: a lossy decode would turn it into ef bf bd.
    let out = c
        .ssh(&[], "")
        .arg(std::ffi::OsStr::from_bytes(b"printf %s \xe9 | od -An -tx1"))
        .run()?
        .success()?;
    ensure!(
        out.stdout_str().trim() == "e9",
        "the byte changed on its way:\n{out}"
    );
    Ok(())
}

#[test]
fn terminal_modes_disabled_characters_stay_disabled() -> Result<()> {
    let (_agent, c, _) = agent_and_client()?;
    // OpenSSH sends 255 for an unset special character; Linux spells that 0.
    let pty = c.ssh_on_pty(&["-tt"], "stty -a", "xterm", 24, 80)?;
    let screen = pty.expect("swtch", Duration::from_secs(20))?;
    ensure!(
        screen.contains("eol = <undef>") && screen.contains("eol2 = <undef>"),
        "unset characters came out set:\n{screen}"
    );
    Ok(())
}

#[test]
fn a_dropped_client_hangs_up_its_terminal() -> Result<()> {
    let (_agent, c, dir) = agent_and_client()?;
    let pidfile = format!("{dir}/shell.pid");
    let ssh = c
        .ssh(&["-tt"], &format!("echo $$ > {pidfile}; exec sleep 1000"))
        .spawn()?;
    let started = util::wait_until(Duration::from_secs(20), || {
        fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    });
    ensure!(started, "the session never started");
    let pid: u32 = fs::read_to_string(&pidfile)?.trim().parse()?;
    // SIGKILL: the client vanishes without closing anything, like a lost network.
    let _ = ssh.kill();
    let hung_up = util::wait_until(Duration::from_secs(15), || !util::process_alive(pid));
    ensure!(
        hung_up,
        "the session's program outlived its client (pid {pid})"
    );
    Ok(())
}
