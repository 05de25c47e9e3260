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
//! Each returns an error describing what a user would have seen go wrong. Moving
//! files (`scp`, `sftp`, `rsync`, `tar`) is in `files`, forwarding (ports, the
//! agent, X11) in `forwarding`.

use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::client::Client;
use crate::process::shell_quote;
use crate::util::{first_word, random_bytes, sha256_hex, wait_until};

mod files;
mod forwarding;

pub use files::{
    large_output, rsync_both_ways, scp_both_ways, scp_preserves_mtime_and_mode, sftp_batch_ops,
    sftp_both_ways, tar_roundtrip,
};
pub use forwarding::{
    ForwardedAgent, agent_forwarding, agent_forwarding_checked, local_forward,
    remote_forward_and_cancel, with_forwarded_agent, x11_refused,
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
