//! The newcomer's path: from a clean data directory, the README's first command
//! (`scripts/up`) comes up, and the ssh line it prints works; a second `up` on the
//! same directory keeps the sandbox, the key and the account.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Starts `scripts/up` and returns it with its stdout lines up to the ssh line.
fn start(home: &Path, data: &Path, ports: &[u16; 3]) -> (Up, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut child = Command::new(root.join("scripts/up"))
        .args(["--ssh-listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--http-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--runner-listen", &format!("127.0.0.1:{}", ports[2])])
        .env("HOME", home)
        .env("WARREN_DATA_DIR", data)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let up = Up(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    // The first run builds release binaries and maybe the base image.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1200)) {
        let done = line.starts_with("ssh ");
        lines.push(line);
        if done {
            return (up, lines);
        }
    }
    panic!("scripts/up printed no ssh line:\n{}", lines.join("\n"));
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

#[test]
fn the_first_readme_command_comes_up_and_its_ssh_line_works() {
    let home = tempfile::TempDir::new().unwrap();
    let data = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    let key = home.path().join(".ssh/id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let ports = [free_port(), free_port(), free_port()];

    let (up, lines) = start(home.path(), data.path(), &ports);
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
