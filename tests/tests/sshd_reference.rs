//! The shared scenarios against OpenSSH's own sshd: proof that each scenario describes
//! what a real SSH server does, so a scenario failing against the agent points at the
//! agent. Skipped (with a note) when sshd is not installed or the tests are not root,
//! except in CI, where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::Result;
use tempfile::TempDir;
use warren_tests::util::current_user;
use warren_tests::{Client, Sshd, scenarios};

/// sshd, a client it authorizes, and a scratch directory; `None` when unavailable.
fn sshd_and_client() -> Result<Option<(Sshd, Client, TempDir, String)>> {
    if !warren_tests::util::prerequisite(
        Sshd::available(),
        "root and /usr/sbin/sshd (openssh-server)",
    )? {
        return Ok(None);
    }
    let sshd = Sshd::start()?;
    let client = sshd.client()?;
    let scratch = tempfile::Builder::new()
        .prefix("warren-sshd-dir-")
        .tempdir()?;
    let dir = scratch.path().to_string_lossy().into_owned();
    Ok(Some((sshd, client, scratch, dir)))
}

macro_rules! reference {
    ($name:ident, |$c:ident, $dir:ident| $body:expr) => {
        #[test]
        fn $name() -> Result<()> {
            let Some((_sshd, $c, _scratch, $dir)) = sshd_and_client()? else {
                return Ok(());
            };
            let _ = &$dir;
            $body
        }
    };
}

reference!(exec_exit_codes, |c, dir| scenarios::exec_exit_codes(&c));
reference!(exec_separates_stdout_and_stderr, |c, dir| {
    scenarios::stdout_stderr_separation(&c)
});
reference!(exec_stdin_is_binary_safe, |c, dir| {
    scenarios::binary_stdin_roundtrip(&c)
});
reference!(exec_tar_round_trip, |c, dir| scenarios::tar_roundtrip(
    &c, &dir
));
reference!(exec_killed_by_signal, |c, dir| scenarios::exit_signal(&c));
reference!(exec_large_output, |c, dir| {
    scenarios::large_output(&c, &dir, 64 << 20, || {})
});
reference!(pty_shell, |c, dir| scenarios::pty_shell(&c));
reference!(pty_exec, |c, dir| scenarios::pty_exec(&c));
reference!(env_lang_and_lc_pass_others_dropped, |c, dir| {
    scenarios::env_requests(&c, false)
});
reference!(login_environment, |c, dir| {
    let me = current_user()?;
    scenarios::login_environment(&c, &me.name, &me.home, &me.shell)
});
reference!(ssh_connection_env, |c, dir| scenarios::ssh_connection_env(
    &c
));
reference!(scp_both_ways, |c, dir| scenarios::scp_both_ways(
    &c,
    &dir,
    16 << 20
));
reference!(sftp_both_ways, |c, dir| scenarios::sftp_both_ways(
    &c,
    &dir,
    16 << 20
));
reference!(sftp_batch_operations, |c, dir| scenarios::sftp_batch_ops(
    &c, &dir
));
reference!(scp_p_keeps_mtime_and_mode, |c, dir| {
    scenarios::scp_preserves_mtime_and_mode(&c, &dir)
});
reference!(rsync_both_ways, |c, dir| scenarios::rsync_both_ways(
    &c, &dir
));
reference!(local_forward, |c, dir| scenarios::local_forward(&c));
reference!(remote_forward_and_cancel, |c, dir| {
    scenarios::remote_forward_and_cancel(&c)
});
reference!(agent_forwarding, |c, dir| scenarios::agent_forwarding(&c));
reference!(x11_refused, |c, dir| scenarios::x11_refused(&c));
reference!(keepalive, |c, dir| scenarios::keepalive(&c));
reference!(background_survives_channel_close, |c, dir| {
    scenarios::background_survives_channel_close(&c, &dir)
});
