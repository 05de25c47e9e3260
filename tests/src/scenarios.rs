//! User sessions every Warren SSH endpoint must get right, written once and run against
//! the agent, against OpenSSH's sshd (to prove the scenario itself is right), and later
//! through the gateway.
//!
//! Each scenario takes a logged-in-capable [`Client`] and `dir`, an empty directory on
//! the server side the session user may write to. Remote state is checked through the
//! session itself (`sha256sum`, `stat` over ssh), so a scenario does not care where
//! the server's filesystem lives. Scenarios that open a port on the server side and
//! reach it from the test (remote forwarding) assume the server runs on this machine.
//!
//! Each returns an error describing what a user would have seen go wrong.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::client::Client;
use crate::process::{Cmd, Output, Running, shell_quote};
use crate::util::{
    EchoServer, first_word, free_port, random_bytes, random_file, sample_tree, sha256_hex,
    sha256sum, tcp_roundtrip, tree, wait_until,
};

/// Timeout for commands that move 100+ MB.
const BULK: Duration = Duration::from_secs(300);

fn q(path: impl AsRef<Path>) -> String {
    shell_quote(&path.as_ref().to_string_lossy())
}

fn remote_sha256(c: &Client, path: &str) -> Result<String> {
    let out = c
        .exec(&format!("sha256sum {}", q(path)))
        .timeout(BULK)
        .run()?
        .success()?;
    first_word(&out.stdout_str())
}

/// `ssh host 'exit N'` exits N; a missing command exits 127 with the shell's complaint.
pub fn exec_exit_codes(c: &Client) -> Result<()> {
    for code in [0, 1, 3, 42, 254, 255] {
        let out = c.exec(&format!("exit {code}")).run()?;
        ensure!(
            out.code() == Some(code),
            "`ssh host 'exit {code}'` should exit {code}:\n{out}"
        );
        ensure!(out.stderr.is_empty(), "unexpected stderr:\n{out}");
    }
    let out = c.exec("true && false").run()?;
    ensure!(
        out.code() == Some(1),
        "`true && false` should exit 1:\n{out}"
    );
    let out = c.exec("warren-no-such-command").run()?;
    ensure!(
        out.code() == Some(127) && out.stderr_str().contains("not found"),
        "a missing command should exit 127 with `not found` on stderr:\n{out}"
    );
    Ok(())
}

/// stdout and stderr arrive separately and in order, each byte for byte.
pub fn stdout_stderr_separation(c: &Client) -> Result<()> {
    let out = c
        .exec("echo out1; echo err1 >&2; printf 'out2'; printf 'err2' >&2; exit 5")
        .run()?;
    ensure!(out.code() == Some(5), "exit status lost:\n{out}");
    ensure!(
        out.stdout == b"out1\nout2",
        "stdout should be exactly `out1\\nout2`:\n{out}"
    );
    ensure!(
        out.stderr == b"err1\nerr2",
        "stderr should be exactly `err1\\nerr2`:\n{out}"
    );
    Ok(())
}

/// Random bytes through `cat` come back identical; `sha256sum` on the far side sees
/// exactly what was sent (so stdin's EOF arrived after the last byte).
pub fn binary_stdin_roundtrip(c: &Client) -> Result<()> {
    let data = random_bytes(8 << 20)?;
    let out = c.exec("cat").stdin(data.clone()).run()?.success()?;
    ensure!(
        out.stdout.len() == data.len() && out.stdout == data,
        "cat returned {} bytes (sha256 {}) for {} sent (sha256 {})",
        out.stdout.len(),
        sha256_hex(&out.stdout),
        data.len(),
        sha256_hex(&data)
    );
    let out = c.exec("sha256sum").stdin(data.clone()).run()?.success()?;
    ensure!(
        first_word(&out.stdout_str())? == sha256_hex(&data),
        "the remote sha256sum saw different bytes:\n{out}"
    );
    // Every byte value, including the ones a terminal would interpret.
    let all: Vec<u8> = (0..=255u8).cycle().take(256 * 64).collect();
    let out = c.exec("cat").stdin(all.clone()).run()?.success()?;
    ensure!(
        out.stdout == all,
        "bytes were altered on the way (no PTY should be involved)"
    );
    Ok(())
}

/// `tar c . | ssh host 'tar x -C dir'` and back: EOF both ways, every file intact.
pub fn tar_roundtrip(c: &Client, dir: &str) -> Result<()> {
    let src = c.dir().join("tar-src");
    let back = c.dir().join("tar-back");
    sample_tree(&src)?;
    fs::create_dir_all(&back)?;
    let remote = format!("{dir}/tar-x");
    c.pipeline(&format!(
        "tar c -C {} . | {{ssh}} {}",
        q(&src),
        shell_quote(&format!(
            "mkdir -p {} && tar x -C {}",
            q(&remote),
            q(&remote)
        ))
    ))
    .timeout(BULK)
    .run()?
    .success()
    .context("upload with tar")?;
    c.pipeline(&format!(
        "{{ssh}} {} | tar x -C {}",
        shell_quote(&format!("tar c -C {} .", q(&remote))),
        q(&back)
    ))
    .timeout(BULK)
    .run()?
    .success()
    .context("download with tar")?;
    let (want, got) = (tree(&src)?, tree(&back)?);
    ensure!(
        want == got,
        "tree differs after the round-trip:\nsent: {want:#?}\ngot back: {got:#?}"
    );
    Ok(())
}

/// A command that kills itself with SIGTERM: the server reports exit-signal, and the
/// OpenSSH client shows it as sshd's clients see it — exit code 255, no status, and
/// the output written before the signal intact.
pub fn exit_signal(c: &Client) -> Result<()> {
    let out = c.ssh(&["-v"], "echo before; kill -TERM $$").run()?;
    ensure!(
        out.code() == Some(255),
        "ssh should exit 255 when the command is killed:\n{out}"
    );
    ensure!(
        out.stdout == b"before\n",
        "output before the signal was lost:\n{out}"
    );
    ensure!(
        out.stderr_str().contains("rtype exit-signal"),
        "the server did not send exit-signal (ssh -v shows no `rtype exit-signal`):\n{out}"
    );
    Ok(())
}

/// A large output (`bytes`) streams through intact while the client stalls for a while;
/// `sample` is called during the transfer (e.g. to read the server's memory).
pub fn large_output(c: &Client, dir: &str, bytes: u64, mut sample: impl FnMut()) -> Result<()> {
    let file = format!("{dir}/large.bin");
    c.exec(&format!("head -c {bytes} /dev/urandom > {}", q(&file)))
        .timeout(BULK)
        .run()?
        .success()?;
    let want = remote_sha256(c, &file)?;
    let mut ssh = c
        .exec(&format!("cat {}", q(&file)))
        .stream_stdout()
        .timeout(BULK)
        .spawn()?;
    let mut stdout = ssh.take_stdout().context("stdout")?;
    let mut sum = Cmd::new("sha256sum").stdin_piped().timeout(BULK).spawn()?;
    let mut sum_in = sum.take_stdin().context("sha256sum stdin")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    let mut stalled = false;
    let mut next_sample = 0u64;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum_in.write_all(&buf[..n])?;
        total += n as u64;
        if total >= next_sample {
            sample();
            next_sample += 8 << 20;
        }
        if !stalled && total >= 16 << 20 {
            // A slow reader: the server must stop reading the command's output rather
            // than buffer all of it.
            stalled = true;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                sample();
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(sum_in);
    let status = ssh.wait()?;
    ensure!(status.status.success(), "ssh failed:\n{status}");
    let got = first_word(&sum.wait()?.success()?.stdout_str())?;
    ensure!(total == bytes, "received {total} bytes, expected {bytes}");
    ensure!(got == want, "checksum differs: got {got}, sent {want}");
    Ok(())
}

/// An interactive shell on a PTY: `tty` is a /dev/pts device, TERM comes through, the
/// window size is the terminal's and follows a resize, Ctrl-C interrupts, and the
/// shell's exit status is ssh's.
pub fn pty_shell(c: &Client) -> Result<()> {
    const T: Duration = Duration::from_secs(15);
    let mut pty = c.ssh_on_pty(&["-tt"], "", "xterm-256color", 33, 101)?;
    // Typed text is echoed; expect only what the shell expands.
    pty.send("echo TTY=$(tty)\r")?;
    pty.expect("TTY=/dev/pts/", T)
        .context("tty is not a /dev/pts device")?;
    pty.send("echo TERM=$TERM.\r")?;
    pty.expect("TERM=xterm-256color.", T)
        .context("TERM not passed through")?;
    pty.send("echo SIZE=$(stty size).\r")?;
    pty.expect("SIZE=33 101.", T)
        .context("initial window size")?;

    pty.resize(40, 120)?;
    // ssh notices SIGWINCH asynchronously; ask until the new size shows (bounded).
    let mut seen = false;
    for i in 0..10 {
        thread::sleep(Duration::from_millis(200));
        // `$((1000+i))` expands only in the output, never in the echoed input.
        pty.send(format!("echo SZ$((1000+{i}))=$(stty size)/\r"))?;
        pty.expect(&format!("SZ{}=", 1000 + i), T)?;
        if pty.expect("/", T)?.starts_with("40 120") {
            seen = true;
            break;
        }
    }
    ensure!(
        seen,
        "window-change never reached the shell (stty size stays 33 101)"
    );

    pty.send("sleep 30\r")?;
    thread::sleep(Duration::from_millis(500));
    pty.send("\x03")?;
    pty.send("echo AFTER=$((6*7))\r")?;
    pty.expect("AFTER=42", Duration::from_secs(10))
        .context("Ctrl-C did not interrupt `sleep 30`")?;

    pty.send("exit 7\r")?;
    let status = pty.wait(T)?;
    ensure!(
        status.code() == Some(7),
        "ssh should exit 7 like the shell, got {status}"
    );
    Ok(())
}

/// `ssh -tt host cmd`: a command on a PTY sees a terminal; stderr and stdout share it
/// (so both appear on screen) and \n becomes \r\n.
pub fn pty_exec(c: &Client) -> Result<()> {
    let mut pty = c.ssh_on_pty(
        &["-tt"],
        "tty; echo TERM=$TERM; stty size; echo err >&2; exit 4",
        "vt100",
        24,
        80,
    )?;
    let t = Duration::from_secs(15);
    pty.expect("/dev/pts/", t)?;
    pty.expect("TERM=vt100\r\n", t)?;
    pty.expect("24 80\r\n", t)?;
    pty.expect("err\r\n", t)?;
    let status = pty.wait(t)?;
    ensure!(status.code() == Some(4), "exit status over a PTY: {status}");
    Ok(())
}

/// `SetEnv` of LANG and LC_* reaches the command; FOO is dropped unless the server
/// was told to accept it (`foo_allowed`).
pub fn env_requests(c: &Client, foo_allowed: bool) -> Result<()> {
    let out = c
        .ssh(
            &["-o", "SetEnv=LANG=C.UTF-8 LC_TIME=C FOO=bar"],
            r#"echo "LANG=$LANG LC_TIME=$LC_TIME FOO=${FOO-unset}""#,
        )
        .run()?
        .success()?;
    let want = format!(
        "LANG=C.UTF-8 LC_TIME=C FOO={}",
        if foo_allowed { "bar" } else { "unset" }
    );
    ensure!(out.stdout_trimmed() == want, "expected `{want}`:\n{out}");
    Ok(())
}

/// The session's environment names the sandbox user as sshd would: HOME, USER,
/// LOGNAME, SHELL from the passwd entry, a sane PATH.
pub fn login_environment(c: &Client, user: &str, home: &Path, shell: &Path) -> Result<()> {
    let out = c
        .exec(r#"printf '%s\n' "HOME=$HOME" "USER=$USER" "LOGNAME=$LOGNAME" "SHELL=$SHELL" "PATH=$PATH""#)
        .run()?
        .success()?;
    let text = out.stdout_str();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_owned()
    };
    ensure!(
        get("HOME") == home.to_string_lossy(),
        "HOME should be {}:\n{out}",
        home.display()
    );
    ensure!(get("USER") == user, "USER should be {user}:\n{out}");
    ensure!(get("LOGNAME") == user, "LOGNAME should be {user}:\n{out}");
    ensure!(
        get("SHELL") == shell.to_string_lossy(),
        "SHELL should be {}:\n{out}",
        shell.display()
    );
    let path = get("PATH");
    ensure!(
        path.split(':').any(|p| p == "/usr/bin") && path.split(':').any(|p| p == "/bin"),
        "PATH should include /usr/bin and /bin:\n{out}"
    );
    Ok(())
}

/// A `bytes`-long random file up and down with scp; checksums match both ways.
pub fn scp_both_ways(c: &Client, dir: &str, bytes: u64) -> Result<()> {
    let local = c.dir().join("scp-up.bin");
    random_file(&local, bytes)?;
    let want = sha256sum(&local)?;
    let remote_up = format!("{dir}/scp-up.bin");
    c.scp(&[], &[&local.to_string_lossy(), &c.remote(&remote_up)])
        .timeout(BULK)
        .run()?
        .success()
        .context("scp upload")?;
    ensure!(
        remote_sha256(c, &remote_up)? == want,
        "uploaded file differs"
    );

    let remote_down = format!("{dir}/scp-down.bin");
    c.exec(&format!(
        "head -c {bytes} /dev/urandom > {}",
        q(&remote_down)
    ))
    .timeout(BULK)
    .run()?
    .success()?;
    let want = remote_sha256(c, &remote_down)?;
    let local_down = c.dir().join("scp-down.bin");
    c.scp(
        &[],
        &[&c.remote(&remote_down), &local_down.to_string_lossy()],
    )
    .timeout(BULK)
    .run()?
    .success()
    .context("scp download")?;
    ensure!(sha256sum(&local_down)? == want, "downloaded file differs");
    fs::remove_file(&local)?;
    fs::remove_file(&local_down)?;
    Ok(())
}

/// A `bytes`-long random file up and down with sftp; checksums match both ways.
pub fn sftp_both_ways(c: &Client, dir: &str, bytes: u64) -> Result<()> {
    let local = c.dir().join("sftp-up.bin");
    random_file(&local, bytes)?;
    let want_up = sha256sum(&local)?;
    let remote_down = format!("{dir}/sftp-down.bin");
    c.exec(&format!(
        "head -c {bytes} /dev/urandom > {}",
        q(&remote_down)
    ))
    .timeout(BULK)
    .run()?
    .success()?;
    let want_down = remote_sha256(c, &remote_down)?;
    let local_down = c.dir().join("sftp-down.bin");
    let remote_up = format!("{dir}/sftp-up.bin");
    let batch = format!(
        "put {} {}\nget {} {}\n",
        q(&local),
        q(&remote_up),
        q(&remote_down),
        q(&local_down)
    );
    c.sftp(&["-b", "-"])
        .stdin(batch)
        .timeout(BULK)
        .run()?
        .success()?;
    ensure!(
        remote_sha256(c, &remote_up)? == want_up,
        "sftp put: file differs"
    );
    ensure!(
        sha256sum(&local_down)? == want_down,
        "sftp get: file differs"
    );
    fs::remove_file(&local)?;
    fs::remove_file(&local_down)?;
    Ok(())
}

/// The everyday sftp commands in one batch: mkdir, put, rename, symlink, chmod, ls,
/// rmdir, rm, get through a symlink — and the filesystem shows each.
pub fn sftp_batch_ops(c: &Client, dir: &str) -> Result<()> {
    let local = c.dir().join("batch.txt");
    fs::write(&local, "batch contents\n")?;
    let fetched = c.dir().join("fetched.txt");
    let batch = format!(
        "cd {dir}\n\
         mkdir sub\n\
         put {local} sub/a.txt\n\
         rename sub/a.txt sub/b.txt\n\
         symlink b.txt sub/link\n\
         chmod 600 sub/b.txt\n\
         ls -l sub\n\
         mkdir gone\n\
         rmdir gone\n\
         put {local} sub/tmp.txt\n\
         rm sub/tmp.txt\n\
         get sub/link {fetched}\n\
         pwd\n",
        dir = q(dir),
        local = q(&local),
        fetched = q(&fetched),
    );
    let out = c.sftp(&["-b", "-"]).stdin(batch).run()?.success()?;
    let listing = out.stdout_str();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| !l.starts_with("sftp>") && l.trim_end().ends_with(name))
            .unwrap_or("")
    };
    ensure!(
        line("sub/b.txt").starts_with("-rw-------") && line("sub/link").starts_with('l'),
        "`ls -l sub` should list b.txt as -rw------- and link as a symlink:\n{out}"
    );
    ensure!(
        fs::read_to_string(&fetched)? == "batch contents\n",
        "get through the symlink fetched other contents"
    );
    let check = c
        .exec(&format!(
            "cd {} && ls -A sub && stat -c %a sub/b.txt && readlink sub/link && \
             test ! -e gone && echo gone-ok",
            q(dir)
        ))
        .run()?
        .success()?;
    ensure!(
        check.stdout_str() == "b.txt\nlink\n600\nb.txt\ngone-ok\n",
        "the server's filesystem does not show the batch's effects:\n{check}"
    );
    Ok(())
}

/// `scp -p` keeps mtime and mode, both ways.
pub fn scp_preserves_mtime_and_mode(c: &Client, dir: &str) -> Result<()> {
    let local = c.dir().join("keep.txt");
    fs::write(&local, "kept\n")?;
    fs::set_permissions(&local, fs::Permissions::from_mode(0o640))?;
    fs::File::options()
        .write(true)
        .open(&local)?
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))?;
    let remote = format!("{dir}/keep.txt");
    c.scp(&["-p"], &[&local.to_string_lossy(), &c.remote(&remote)])
        .run()?
        .success()?;
    let out = c
        .exec(&format!("stat -c '%a %Y' {}", q(&remote)))
        .run()?
        .success()?;
    ensure!(
        out.stdout_trimmed() == "640 1000000000",
        "scp -p upload: expected mode 640 and mtime 1000000000:\n{out}"
    );

    let remote_src = format!("{dir}/from-server.txt");
    c.exec(&format!(
        "echo server > {f} && chmod 604 {f} && touch -d @1100000000 {f}",
        f = q(&remote_src)
    ))
    .run()?
    .success()?;
    let local_down = c.dir().join("from-server.txt");
    c.scp(
        &["-p"],
        &[&c.remote(&remote_src), &local_down.to_string_lossy()],
    )
    .run()?
    .success()?;
    let meta = fs::metadata(&local_down)?;
    ensure!(
        meta.mode() & 0o7777 == 0o604 && meta.mtime() == 1_100_000_000,
        "scp -p download: mode {:o} mtime {} (expected 604, 1100000000)",
        meta.mode() & 0o7777,
        meta.mtime()
    );
    Ok(())
}

/// `rsync -a -e ssh` up and back down: the tree arrives identical (content, modes,
/// mtimes, symlinks), and a second run transfers nothing.
pub fn rsync_both_ways(c: &Client, dir: &str) -> Result<()> {
    let src = c.dir().join("rsync-src");
    let back = c.dir().join("rsync-back");
    sample_tree(&src)?;
    let remote = format!("{dir}/rsync/");
    c.rsync(
        &["-a"],
        &[&format!("{}/", src.display()), &c.remote(&remote)],
    )
    .timeout(BULK)
    .run()?
    .success()
    .context("rsync upload")?;
    c.rsync(
        &["-a"],
        &[&c.remote(&remote), &format!("{}/", back.display())],
    )
    .timeout(BULK)
    .run()?
    .success()
    .context("rsync download")?;
    let (want, got) = (tree(&src)?, tree(&back)?);
    ensure!(
        want == got,
        "tree differs after rsync:\nsent: {want:#?}\ngot: {got:#?}"
    );
    let again = c
        .rsync(
            &["-a", "--itemize-changes"],
            &[&format!("{}/", src.display()), &c.remote(&remote)],
        )
        .timeout(BULK)
        .run()?
        .success()?;
    ensure!(
        again.stdout.is_empty(),
        "a second rsync should find nothing to do:\n{again}"
    );
    Ok(())
}

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

/// `ServerAliveInterval=1`: keepalives are answered, so a quiet session survives.
pub fn keepalive(c: &Client) -> Result<()> {
    let out = c
        .ssh(
            &["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"],
            "sleep 5; echo alive",
        )
        .run()?;
    ensure!(
        out.code() == Some(0) && out.stdout == b"alive\n",
        "the session should survive 5 s of keepalives:\n{out}"
    );
    Ok(())
}

/// VS Code Remote-SSH: `ssh -T host bash` with a script on stdin that starts a server
/// in the background with nohup and exits; the background process outlives the channel.
pub fn background_survives_channel_close(c: &Client, dir: &str) -> Result<()> {
    let script = format!(
        "cd {dir}\n\
         nohup sh -c 'echo $$ > bg.pid; sleep 2; echo survived > bg.out; exec sleep 60' \
         > /dev/null 2>&1 &\n\
         echo started\n\
         exit 0\n",
        dir = q(dir)
    );
    let out = c.ssh(&["-T"], "bash").stdin(script).run()?;
    ensure!(
        out.code() == Some(0) && out.stdout_trimmed() == "started",
        "the install-style script should print `started` and exit 0:\n{out}"
    );
    let check = format!("cat {}/bg.out 2>/dev/null", q(dir));
    let survived = wait_until(Duration::from_secs(15), || {
        c.exec(&check)
            .run()
            .is_ok_and(|o| o.stdout_trimmed() == "survived")
    });
    let _ = c.exec(&format!("kill $(cat {}/bg.pid)", q(dir))).run();
    ensure!(
        survived,
        "the nohup'd background process died when the channel closed"
    );
    Ok(())
}

/// SSH_CLIENT and SSH_CONNECTION name both ends as sshd does: `client-ip client-port
/// server-port` and `client-ip client-port server-ip server-port` (tools such as VS
/// Code and shell prompts read them). Assumes a direct connection to `c.target()`.
pub fn ssh_connection_env(c: &Client) -> Result<()> {
    let out = c
        .exec(r#"printf '%s\n' "$SSH_CLIENT" "$SSH_CONNECTION""#)
        .run()?
        .success()?;
    let text = out.stdout_str();
    let mut lines = text.lines();
    let client: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let conn: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let port = c.target().port.to_string();
    ensure!(
        client.len() == 3 && client[0] == "127.0.0.1" && client[2] == port,
        "SSH_CLIENT should be `127.0.0.1 <client port> {port}`:\n{out}"
    );
    ensure!(
        conn.len() == 4
            && conn[0] == "127.0.0.1"
            && conn[1] == client[1]
            && conn[2] == c.target().host
            && conn[3] == port,
        "SSH_CONNECTION should be `127.0.0.1 {} {} {port}`:\n{out}",
        client[1],
        c.target().host
    );
    Ok(())
}
