//! The newcomer's path: from a clean data directory, the README's first command
//! (`scripts/up`) comes up, and the ssh line it prints works; a second `up` on the
//! same directory keeps the sandbox, the key and the account.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use warren_tests::stack::{Stack, Up, UpStack};
use warren_tests::{Client, Target, Tmux, scenarios};

fn free_port() -> u16 {
    warren_tests::util::free_port().unwrap()
}

/// Starts `scripts/up` and returns it with its stdout lines up to the ssh line.
fn start(home: &Path, data: &Path, ports: &[u16; 3]) -> (UpStack, Vec<String>) {
    start_with(home, data, ports, &[])
}

/// [`start`] with more arguments for `warren up`. Dropped, it deletes its sandboxes
/// through the API (a test leaves nothing behind on the runner host) unless
/// `keep`, then stops (which drains the warm pool).
fn start_with(
    home: &Path,
    data: &Path,
    ports: &[u16; 3],
    extra: &[&str],
) -> (UpStack, Vec<String>) {
    let up = Stack::builder()
        .up(Up {
            script: true,
            process_backend: false,
            home: home.to_owned(),
            data: data.to_owned(),
            ports: *ports,
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
        })
        .unwrap();
    let lines = up.lines.clone();
    (up, lines)
}

/// Runs the printed ssh line (with the test's key and no host key prompt) plus `command`.
fn run_ssh_line(line: &str, key: &Path, command: &str) -> std::process::Output {
    let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "ssh");
    let target = words.pop().unwrap();
    Command::new("ssh")
        .args(&words[1..])
        .args(["-i", &key.to_string_lossy()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg(target.trim_matches('\''))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A fresh `$HOME` with an ed25519 key in `~/.ssh`, as a newcomer has; and the key.
fn home_with_key() -> (tempfile::TempDir, std::path::PathBuf) {
    let home = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    let key = home.path().join(".ssh/id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    (home, key)
}

#[test]
fn the_first_readme_command_comes_up_and_its_ssh_line_works() {
    let (home, key) = home_with_key();
    let data = tempfile::TempDir::new().unwrap();
    let ports = [free_port(), free_port(), free_port()];

    let (mut up, lines) = start(home.path(), data.path(), &ports);
    // Its sandbox is looked for again below.
    up.keep = true;
    let ssh_line = lines.last().unwrap().clone();
    let out = run_ssh_line(&ssh_line, &key, "echo hello > note && cat note && id -u");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("hello\n"),
        "the printed line failed:\n{}\n{}\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let key_file = data.path().join("admin-api-key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "admin-api-key must be 0600");
    let api_key = std::fs::read_to_string(&key_file).unwrap();
    assert!(api_key.starts_with("wk_"));
    client_scenarios_take_the_in_process_path(&ssh_line, ports[0], &up.api.base, api_key.trim());
    drop(up);

    // Again, on the same data directory: the same sandbox, its files, the same key.
    let (_up, lines) = start(home.path(), data.path(), &ports);
    let again = lines.last().unwrap();
    assert_eq!(
        again, &ssh_line,
        "a second `up` should lead to the same sandbox"
    );
    let out = run_ssh_line(again, &key, "cat note");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "hello\n",
        "the sandbox's files are gone after a second `up`:\n{}\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), api_key);
}

/// In `warren up` the gateway opens the local agents' sockets in process (no
/// tunnel): the client scenarios the remote path passes (tests/tests/docker.rs) pass
/// through it too, logged in with a sandbox token as a password. (Forwards ride the
/// same connection; their Docker-aware checks are docker.rs's and the terminal
/// test's.)
fn client_scenarios_take_the_in_process_path(ssh_line: &str, ssh_port: u16, base: &str, key: &str) {
    let target = ssh_line
        .split_whitespace()
        .last()
        .unwrap()
        .trim_matches('\'');
    let id = target.split(['@', '#']).next().unwrap();
    let (status, token) = api(
        base,
        key,
        "POST",
        &format!("/v1/sandboxes/{id}/token"),
        None,
    );
    assert_eq!(status, 201, "minting a token: HTTP {status}");
    let token = token["token"].as_str().unwrap();
    let c = Client::new(Target::new("127.0.0.1", ssh_port, id))
        .unwrap()
        .with_password(token)
        .unwrap();
    let dir = "/workspace";
    let step = |name: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            panic!("through warren up's in-process path: {name}: {e:#}");
        }
    };
    step("PTY shell", scenarios::pty_shell(&c));
    step("PTY exec", scenarios::pty_exec(&c));
    step("exit codes", scenarios::exec_exit_codes(&c));
    step("exit signal", scenarios::exit_signal(&c));
    step("stdout/stderr", scenarios::stdout_stderr_separation(&c));
    step("binary stdin", scenarios::binary_stdin_roundtrip(&c));
    step("tar", scenarios::tar_roundtrip(&c, dir));
    step("scp 20 MB", scenarios::scp_both_ways(&c, dir, 20 << 20));
    step("sftp 20 MB", scenarios::sftp_both_ways(&c, dir, 20 << 20));
    step("sftp batch", scenarios::sftp_batch_ops(&c, dir));
    step("scp -p", scenarios::scp_preserves_mtime_and_mode(&c, dir));
    step("rsync", scenarios::rsync_both_ways(&c, dir));
    step("X11 refused", scenarios::x11_refused(&c));
    step("keepalive", scenarios::keepalive(&c));
    step(
        "ssh -T bash, nohup in the background",
        scenarios::background_survives_channel_close(&c, dir),
    );
}

/// `curl` against the API with the admin key: (status, JSON body).
fn api(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["-H", "Content-Type: application/json"]);
    if let Some(body) = body {
        cmd.args(["--data", body]);
    }
    let out = cmd.arg(format!("{base}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, status) = text.rsplit_once('\n').unwrap();
    let value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
    (status.trim().parse().unwrap(), value)
}

/// The README's path in a real terminal: `scripts/up` (Docker sandboxes when the
/// machine has them), then the printed ssh line typed into tmux — a command, a
/// resize, Ctrl-C of a running command, exit with a status. Then what `up` must do
/// for sandboxes over time: a missing image is a 422 that stores nothing, failed
/// clones do not eat the runner's room, idle sandboxes are stopped and expired ones
/// deleted.
#[test]
fn warren_up_serves_a_real_terminal_and_keeps_sandboxes_in_check() {
    let (home, key) = home_with_key();
    let data = tempfile::TempDir::new().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let (_up, lines) = start_with(
        home.path(),
        data.path(),
        &ports,
        &["--reap-interval-s", "1"],
    );
    let ssh_line = lines.last().unwrap().clone();
    let in_docker = lines.iter().any(|l| l.contains("Docker containers"));
    if std::env::var_os("CI").is_some() {
        assert!(
            in_docker,
            "in CI `up` must run Docker sandboxes:\n{}",
            lines.join("\n")
        );
    }

    // An interactive shell, typed into a real terminal.
    let mut words: Vec<String> = ssh_line.split_whitespace().map(str::to_owned).collect();
    let target = words.pop().unwrap();
    let status_file = home.path().join("ssh-status");
    let command = format!(
        "{} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o LogLevel=ERROR {}; echo $? > {}; sleep 30",
        words.join(" "),
        key.display(),
        target.trim_matches('\''),
        status_file.display()
    );
    let tmux = Tmux::new();
    tmux.start("s", 100, 30, &[command]).unwrap();
    tmux.keys("s", &["echo READY$((6*7))", "Enter"]).unwrap();
    tmux.wait_for("s", "READY42").unwrap();
    tmux.keys("s", &["tty; stty size", "Enter"]).unwrap();
    let screen = tmux.wait_for("s", "30 100").unwrap();
    assert!(screen.contains("/dev/pts/"), "no terminal:\n{screen}");
    tmux.run(&["resize-window", "-t", "s", "-x", "120", "-y", "40"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys("s", &["clear; stty size", "Enter"]).unwrap();
    tmux.wait_for("s", "40 120").unwrap();
    tmux.keys("s", &["sleep 60; echo NOT-INTERRUPTED", "Enter"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    tmux.keys("s", &["C-c"]).unwrap();
    tmux.keys("s", &["echo AFTER$((40+2))", "Enter"]).unwrap();
    let screen = tmux.wait_for("s", "AFTER42").unwrap();
    assert!(
        !screen.lines().any(|l| l.trim() == "NOT-INTERRUPTED"),
        "Ctrl-C did not interrupt:\n{screen}"
    );
    tmux.keys("s", &["exit 3", "Enter"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !status_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "ssh did not end after `exit 3`:\n{}",
            tmux.screen("s").unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read_to_string(&status_file).unwrap().trim(), "3");

    // The terminal session was recorded: the API hands out its asciicast, and the
    // console (`up`'s account has this key) plays it back.
    let base = format!("http://127.0.0.1:{}", ports[1]);
    let admin = std::fs::read_to_string(data.path().join("admin-api-key")).unwrap();
    let admin = admin.trim();
    let sandbox = target
        .trim_matches('\'')
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let session = loop {
        let (status, list) = api(
            &base,
            admin,
            "GET",
            &format!("/v1/sandboxes/{sandbox}/sessions"),
            None,
        );
        assert_eq!(status, 200, "{list}");
        let recorded =
            list["sessions"].as_array().unwrap().iter().find(|s| {
                s["channels"].as_array().unwrap().iter().any(|c| {
                    c["kind"] == "shell" && c["recorded"] == true && c["exit"] == "status:3"
                })
            });
        if let Some(s) = recorded {
            break s["id"].as_str().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recorded shell: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let cast = Command::new("curl")
        .args(["-s", "-f", "-H", &format!("Authorization: Bearer {admin}")])
        .arg(format!("{base}/v1/sessions/{session}/recording"))
        .output()
        .unwrap();
    assert!(cast.status.success(), "GET the recording: {cast:?}");
    let cast = String::from_utf8_lossy(&cast.stdout).into_owned();
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64()),
        (Some(2), Some(100)),
        "{header}"
    );
    assert!(
        cast.contains("READY42") && cast.contains("\"120x40\""),
        "{cast}"
    );
    let console = ssh_line.replace(
        &target,
        &format!(
            "admin@{}",
            target.trim_matches('\'').split('@').nth(1).unwrap()
        ),
    );
    let replayed = run_ssh_line(&console, &key, &format!("replay {session} --speed 100"));
    assert!(
        replayed.status.success() && String::from_utf8_lossy(&replayed.stdout).contains("AFTER42"),
        "replay: {replayed:?}"
    );

    // Creates that cannot work store nothing, or nothing that takes room.
    let count = || {
        let (_, list) = api(&base, admin, "GET", "/v1/sandboxes?limit=500", None);
        list["sandboxes"].as_array().unwrap().len()
    };
    let before = count();
    for _ in 0..3 {
        let (status, body) = api(
            &base,
            admin,
            "POST",
            "/v1/sandboxes",
            Some(r#"{"image":"warren-no-such-image:1"}"#),
        );
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "image_not_found", "{body}");
    }
    assert_eq!(
        count(),
        before,
        "a create with a missing image stored a sandbox"
    );
    if in_docker {
        // More failed clones than the old fixed capacity of 16. An https URL (local
        // paths are refused before anything is made) whose clone fails at once: the
        // container's own loopback has nothing on port 1.
        for _ in 0..17 {
            let (status, body) = api(
                &base,
                admin,
                "POST",
                "/v1/sandboxes",
                Some(
                    r#"{"repo":"https://127.0.0.1:1/nonexistent/warren-test.git","memory_mb":128}"#,
                ),
            );
            assert_eq!(status, 502, "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("cloning"),
                "the failure should say why: {body}"
            );
        }
        let identity: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data.path().join("runner/runner.json")).unwrap())
                .unwrap();
        let label = format!(
            "label=org.warren.runner={}",
            identity["runner_id"].as_str().unwrap()
        );
        // Containers of the runner not running. The warm pool refills in the
        // background, and a member being made is `created` for a moment; a container
        // a failed create left behind stays so.
        let leftovers = || {
            let out = Command::new("docker")
                .args(["ps", "-a", "--filter", &label, "--filter", "status=created"])
                .args(["--filter", "status=exited", "--format"])
                .arg("{{.Names}} {{.Status}} pool={{.Label \"org.warren.pool\"}}")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !leftovers().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        let left = leftovers();
        assert!(
            left.is_empty(),
            "failed creates left containers behind:\n{left}"
        );
    }
    let (status, idle) = api(
        &base,
        admin,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"idle_timeout_s":60,"memory_mb":128}"#),
    );
    assert_eq!(
        status, 201,
        "after failed creates the runner must still have room: {idle}"
    );
    let (status, expiring) = api(
        &base,
        admin,
        "POST",
        "/v1/sandboxes",
        Some(r#"{"ttl_s":60,"memory_mb":128}"#),
    );
    assert_eq!(status, 201, "{expiring}");

    // Over time: the idle one is stopped (Docker's reaper), the expired one deleted.
    let state = |id: &serde_json::Value| {
        let (_, s) = api(
            &base,
            admin,
            "GET",
            &format!("/v1/sandboxes/{}", id.as_str().unwrap()),
            None,
        );
        s
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let i = state(&idle["id"]);
        let e = state(&expiring["id"]);
        let idle_done = !in_docker || i["state"] == "stopped";
        if idle_done && e["state"] == "deleted" {
            if in_docker {
                let path = format!("/v1/sandboxes/{}/events", idle["id"].as_str().unwrap());
                let (_, events) = api(&base, admin, "GET", &path, None);
                let last = events["events"].as_array().unwrap().last().unwrap().clone();
                assert_eq!(last["reason"], "idle", "{events}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 150 s: idle sandbox {i}, expiring sandbox {e}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
