//! The SFTP server as a person meets it: OpenSSH's own `sftp` and `scp` talking to
//! `warren-agent sftp-server` directly over stdio (`sftp -D`, `scp -S`), with no SSH in
//! between. The last tests speak raw SFTP to check what no OpenSSH command can provoke.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tempfile::TempDir;

mod raw;

const AGENT: &str = env!("CARGO_BIN_EXE_warren-agent");

/// A remote home for the server and a local directory for the client.
struct Sandbox {
    home: TempDir,
    local: TempDir,
    /// Run the server as `nobody` (see [`Sandbox::unprivileged`]).
    as_nobody: bool,
}

/// What a command printed, and whether it succeeded.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            home: TempDir::new().unwrap(),
            local: TempDir::new().unwrap(),
            as_nobody: false,
        }
    }

    /// A sandbox whose server never runs as root, so the kernel's permission checks
    /// apply as they do for a real sandbox user. When the tests run as root, the server
    /// is started as `nobody` through `setpriv`, in a home anyone may enter.
    fn unprivileged() -> Self {
        let mut sandbox = Self::new();
        if is_root() {
            sandbox.as_nobody = true;
            fs::set_permissions(sandbox.home(), fs::Permissions::from_mode(0o777)).unwrap();
        }
        sandbox
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn remote(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn local(&self, name: &str) -> PathBuf {
        self.local.path().join(name)
    }

    /// The server command line, in the quoting `sftp -D` splits (single quotes).
    fn server_command(&self) -> String {
        assert!(!AGENT.contains('\''), "agent path {AGENT} has a quote");
        let agent = format!("'{AGENT}' sftp-server");
        if self.as_nobody {
            format!("setpriv --reuid=65534 --regid=65534 --clear-groups {agent}")
        } else {
            agent
        }
    }

    /// Runs `sftp -b` with these commands (one per line), the server starting in home.
    fn sftp(&self, commands: &str) -> Run {
        let batch = self.local("batch");
        fs::write(&batch, commands).unwrap();
        let output = Command::new("sftp")
            .arg("-b")
            .arg(&batch)
            .arg("-D")
            .arg(self.server_command())
            .current_dir(self.home())
            .env("HOME", self.home())
            .output()
            .expect("run OpenSSH's sftp (is openssh-client installed?)");
        run(output)
    }

    /// Runs `scp` with a stand-in for ssh that starts the server directly.
    fn scp(&self, args: &[&str]) -> Run {
        let fake_ssh = self.local("fake-ssh");
        if !fake_ssh.exists() {
            // scp runs `<ssh> [options] -s -- <host> sftp`; we only need the server.
            fs::write(
                &fake_ssh,
                format!("#!/bin/sh\nexec {}\n", self.server_command()),
            )
            .unwrap();
            fs::set_permissions(&fake_ssh, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let output = Command::new("scp")
            .arg("-S")
            .arg(&fake_ssh)
            .args(args)
            .current_dir(self.home())
            .env("HOME", self.home())
            .output()
            .expect("run OpenSSH's scp");
        run(output)
    }
}

fn run(output: Output) -> Run {
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    #[track_caller]
    fn assert_ok(&self) -> &Self {
        assert!(
            self.ok,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn assert_fails_with(&self, message: &str) {
        assert!(
            !self.ok,
            "command should have failed\nstdout:\n{}",
            self.stdout
        );
        assert!(
            self.stderr.contains(message),
            "expected {message:?} in stderr:\n{}",
            self.stderr
        );
    }

    /// The output line mentioning `name`, e.g. in `ls -l`.
    #[track_caller]
    fn line_with(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| !line.starts_with("sftp>") && line.ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{}", self.stdout))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Reproducible incompressible bytes (xorshift), so a failure can be rerun exactly.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn mtime(path: &Path) -> i64 {
    fs::metadata(path).unwrap().mtime()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn set_mtime(path: &Path, secs: u64) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn put_and_get_keep_every_byte() {
    let sandbox = Sandbox::new();
    // Several of the client's 255 KiB requests, and not a multiple of any of them.
    let data = random_bytes(3 * 1024 * 1024 + 12_345);
    fs::write(sandbox.local("src.bin"), &data).unwrap();

    let listing = sandbox.sftp(&format!(
        "put {src} upload.bin\nget upload.bin {back}\nls -l upload.bin\n",
        src = sandbox.local("src.bin").display(),
        back = sandbox.local("back.bin").display(),
    ));
    listing.assert_ok();

    assert!(
        fs::read(sandbox.remote("upload.bin")).unwrap() == data,
        "uploaded bytes differ"
    );
    assert!(
        fs::read(sandbox.local("back.bin")).unwrap() == data,
        "downloaded bytes differ"
    );
    assert!(
        listing
            .line_with("upload.bin")
            .contains(&data.len().to_string())
    );
}

#[test]
fn put_p_and_get_p_keep_mode_and_mtime() {
    let sandbox = Sandbox::new();
    let src = sandbox.local("report.txt");
    fs::write(&src, "quarterly numbers\n").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&src, 1_600_000_000);

    sandbox
        .sftp(&format!(
            "put -p {} kept.txt\nput {} plain.txt\n",
            src.display(),
            src.display()
        ))
        .assert_ok();
    assert_eq!(mode(&sandbox.remote("kept.txt")), 0o640);
    assert_eq!(mtime(&sandbox.remote("kept.txt")), 1_600_000_000);
    // Without -p the upload is simply new.
    assert!(mtime(&sandbox.remote("plain.txt")) > 1_600_000_000);

    let remote = sandbox.remote("kept.txt");
    fs::set_permissions(&remote, fs::Permissions::from_mode(0o604)).unwrap();
    set_mtime(&remote, 1_500_000_000);
    let back = sandbox.local("back.txt");
    sandbox
        .sftp(&format!("get -p kept.txt {}\n", back.display()))
        .assert_ok();
    assert_eq!(mode(&back), 0o604);
    assert_eq!(mtime(&back), 1_500_000_000);
    assert_eq!(fs::read(&back).unwrap(), b"quarterly numbers\n");
}

#[test]
fn directories_links_and_permissions_show_in_listings() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.local("notes.txt"), "hello\n").unwrap();

    let run = sandbox.sftp(&format!(
        "mkdir project\ncd project\nput {} notes.txt\nchmod 750 notes.txt\n\
         rename notes.txt readme.txt\nsymlink readme.txt link.txt\nln readme.txt hard.txt\n\
         ls -l\npwd\n",
        sandbox.local("notes.txt").display()
    ));
    run.assert_ok();

    let project = sandbox.remote("project");
    assert!(project.is_dir());
    assert!(
        !project.join("notes.txt").exists(),
        "rename left the old name"
    );
    assert_eq!(mode(&project.join("readme.txt")), 0o750);
    assert_eq!(
        fs::read_link(project.join("link.txt")).unwrap(),
        Path::new("readme.txt")
    );
    let readme = fs::metadata(project.join("readme.txt")).unwrap();
    assert_eq!(
        fs::metadata(project.join("hard.txt")).unwrap().ino(),
        readme.ino()
    );

    assert!(run.line_with("readme.txt").starts_with("-rwxr-x---"));
    assert!(run.line_with("link.txt").starts_with("lrwxrwxrwx"));
    let real_project = project.canonicalize().unwrap();
    assert!(
        run.stdout.contains(&format!(
            "Remote working directory: {}",
            real_project.display()
        )),
        "pwd after cd:\n{}",
        run.stdout
    );

    sandbox
        .sftp("rm project/link.txt\nrm project/hard.txt\nrm project/readme.txt\nrmdir project\n")
        .assert_ok();
    assert!(!project.exists());
}

#[test]
fn df_reports_the_filesystem() {
    let sandbox = Sandbox::new();
    let run = sandbox.sftp("df -h .\n");
    run.assert_ok();
    assert!(
        run.stdout.contains("Size") && run.stdout.contains("Avail"),
        "{}",
        run.stdout
    );
}

#[test]
fn failing_commands_are_reported_and_stop_the_batch() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.remote("existing")).unwrap();
    fs::write(sandbox.remote("existing/file"), "x").unwrap();
    let elsewhere = sandbox.local("x").display().to_string();

    sandbox
        .sftp(&format!("get missing.txt {elsewhere}\n"))
        .assert_fails_with("not found");
    sandbox
        .sftp("rm missing.txt\n")
        .assert_fails_with("No such file");
    sandbox
        .sftp("rmdir missing\n")
        .assert_fails_with("No such file");
    sandbox
        .sftp("chmod 600 missing.txt\n")
        .assert_fails_with("No such file");
    sandbox
        .sftp("rename missing.txt new.txt\n")
        .assert_fails_with("No such file");
    sandbox
        .sftp("cd missing\n")
        .assert_fails_with("No such file");
    // Failures with no errno of their own in SFTP v3 arrive as plain "Failure".
    sandbox
        .sftp("mkdir existing\n")
        .assert_fails_with("Failure");
    sandbox
        .sftp("rmdir existing\n")
        .assert_fails_with("Failure");
    sandbox
        .sftp("symlink anywhere existing/file\n")
        .assert_fails_with("Failure");

    // Batch mode stops at the first failure.
    sandbox
        .sftp("rm missing.txt\nmkdir after\n")
        .assert_fails_with("No such file");
    assert!(!sandbox.remote("after").exists());
}

#[test]
fn the_kernel_decides_permissions() {
    let sandbox = Sandbox::unprivileged();
    // Not ours when the server runs as nobody (the files are root's), mode 000 otherwise.
    let closed = if sandbox.as_nobody { 0o700 } else { 0o000 };
    let locked = sandbox.remote("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(closed)).unwrap();
    let secret = sandbox.remote("secret");
    fs::write(&secret, "s3cret").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(closed & 0o600)).unwrap();
    let elsewhere = sandbox.local("stolen").display().to_string();
    let new = sandbox.local("new").display().to_string();
    fs::write(&new, "new").unwrap();

    sandbox
        .sftp("ls locked\n")
        .assert_fails_with("Permission denied");
    sandbox
        .sftp(&format!("get secret {elsewhere}\n"))
        .assert_fails_with("Permission denied");
    sandbox
        .sftp(&format!("put {new} locked/new\n"))
        .assert_fails_with("Permission denied");
    // Our own file: mode changes work, giving it away does not.
    sandbox
        .sftp(&format!("put {new} mine\nchmod 600 mine\n"))
        .assert_ok();
    assert_eq!(mode(&sandbox.remote("mine")), 0o600);
    sandbox
        .sftp("chown 0 mine\n")
        .assert_fails_with("Permission denied");

    // Let the temporary directory be cleaned up.
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn scp_copies_files_trees_and_tilde_paths() {
    let sandbox = Sandbox::new();
    let data = random_bytes(700_000);
    let src = sandbox.local("photo.jpg");
    fs::write(&src, &data).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&src, 1_234_567_890);
    fs::create_dir_all(sandbox.local("tree/sub")).unwrap();
    fs::write(sandbox.local("tree/sub/leaf.txt"), "leaf\n").unwrap();
    let src = src.display().to_string();

    sandbox.scp(&["-p", &src, "sbx:copied.jpg"]).assert_ok();
    let copied = sandbox.remote("copied.jpg");
    assert!(fs::read(&copied).unwrap() == data);
    assert_eq!(mode(&copied), 0o600);
    assert_eq!(mtime(&copied), 1_234_567_890);

    let back = sandbox.local("back.jpg");
    sandbox
        .scp(&["-p", "sbx:copied.jpg", &back.display().to_string()])
        .assert_ok();
    assert!(fs::read(&back).unwrap() == data);
    assert_eq!(mtime(&back), 1_234_567_890);

    let tree = sandbox.local("tree").display().to_string();
    sandbox.scp(&["-r", &tree, "sbx:tree"]).assert_ok();
    assert_eq!(
        fs::read(sandbox.remote("tree/sub/leaf.txt")).unwrap(),
        b"leaf\n"
    );

    // `~` is the user's home (expand-path@openssh.com).
    sandbox.scp(&[&src, "sbx:~/tilde.jpg"]).assert_ok();
    assert!(sandbox.remote("tilde.jpg").is_file());

    let nowhere = sandbox.local("nowhere").display().to_string();
    sandbox
        .scp(&["sbx:missing.jpg", &nowhere])
        .assert_fails_with("No such file");
}
