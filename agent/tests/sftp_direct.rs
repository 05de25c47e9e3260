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

// ---- Raw protocol: what no OpenSSH command provokes. ----

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_VERSION: u8 = 2;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_DATA: u8 = 103;
const SSH_FXP_EXTENDED: u8 = 200;
const SSH_FXP_EXTENDED_REPLY: u8 = 201;

const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_FAILURE: u32 = 4;
const FX_BAD_MESSAGE: u32 = 5;
const FX_OP_UNSUPPORTED: u32 = 8;

/// The agent's sftp-server on pipes, spoken to packet by packet.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

/// A request body in SSH wire encoding.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn string(self, value: &[u8]) -> Self {
        let mut body = self.u32(value.len().try_into().unwrap());
        body.0.extend_from_slice(value);
        body
    }
}

/// A reply being read field by field.
struct Reply {
    kind: u8,
    rest: Vec<u8>,
}

impl Reply {
    fn u32(&mut self) -> u32 {
        let head: Vec<u8> = self.rest.drain(..4).collect();
        u32::from_be_bytes(head.try_into().unwrap())
    }

    fn u64(&mut self) -> u64 {
        let head: Vec<u8> = self.rest.drain(..8).collect();
        u64::from_be_bytes(head.try_into().unwrap())
    }

    fn string(&mut self) -> Vec<u8> {
        let len = self.u32() as usize;
        self.rest.drain(..len).collect()
    }

    /// (id, code, message) of a STATUS reply.
    #[track_caller]
    fn status(mut self) -> (u32, u32, String) {
        assert_eq!(self.kind, SSH_FXP_STATUS, "expected a STATUS reply");
        let (id, code) = (self.u32(), self.u32());
        (
            id,
            code,
            String::from_utf8_lossy(&self.string()).into_owned(),
        )
    }

    #[track_caller]
    fn handle(mut self, want_id: u32) -> Vec<u8> {
        assert_eq!(
            self.kind, SSH_FXP_HANDLE,
            "expected a HANDLE reply, got {}",
            self.kind
        );
        assert_eq!(self.u32(), want_id);
        self.string()
    }
}

impl Raw {
    fn start(home: &Path) -> Self {
        // Enough descriptors that the handle cap, not the fd limit, is what we meet.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 4096 2>/dev/null; exec \"$0\" sftp-server")
            .arg(AGENT)
            .current_dir(home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, kind: u8, body: Body) {
        let len = u32::try_from(body.0.len() + 1).unwrap();
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(&len.to_be_bytes()).unwrap();
        stdin.write_all(&[kind]).unwrap();
        stdin.write_all(&body.0).unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Reply {
        let mut len = [0; 4];
        self.stdout.read_exact(&mut len).unwrap();
        let mut packet = vec![0; u32::from_be_bytes(len) as usize];
        self.stdout.read_exact(&mut packet).unwrap();
        Reply {
            kind: packet[0],
            rest: packet[1..].to_vec(),
        }
    }

    fn request(&mut self, kind: u8, body: Body) -> Reply {
        self.send(kind, body);
        self.recv()
    }

    fn open(&mut self, id: u32, name: &str) -> Reply {
        let read = 1; // SSH_FXF_READ, no attributes
        self.request(
            SSH_FXP_OPEN,
            Body::default()
                .u32(id)
                .string(name.as_bytes())
                .u32(read)
                .u32(0),
        )
    }

    /// Closes our end, waits for the server to exit by itself, and returns whether it
    /// succeeded and what it said on stderr.
    fn finish(mut self) -> (bool, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after the client left"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        pipe.read_to_string(&mut stderr).unwrap();
        (status.success(), stderr)
    }
}

#[test]
fn protocol_limits_and_status_codes() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.remote("data"), random_bytes(1024 * 1024)).unwrap();
    let mut raw = Raw::start(sandbox.home());

    let mut version = raw.request(SSH_FXP_INIT, Body::default().u32(3));
    assert_eq!(version.kind, SSH_FXP_VERSION);
    assert_eq!(version.u32(), 3);
    let mut extensions = Vec::new();
    while !version.rest.is_empty() {
        extensions.push(String::from_utf8(version.string()).unwrap());
        version.string();
    }
    for name in [
        "limits@openssh.com",
        "expand-path@openssh.com",
        "posix-rename@openssh.com",
    ] {
        assert!(
            extensions.iter().any(|e| e == name),
            "{name} not in {extensions:?}"
        );
    }

    let mut limits = raw.request(
        SSH_FXP_EXTENDED,
        Body::default().u32(1).string(b"limits@openssh.com"),
    );
    assert_eq!(limits.kind, SSH_FXP_EXTENDED_REPLY);
    assert_eq!(limits.u32(), 1);
    let limits = [limits.u64(), limits.u64(), limits.u64(), limits.u64()];
    assert_eq!(limits, [256 * 1024, 255 * 1024, 255 * 1024, 1024]);

    assert_eq!(raw.open(2, "missing").status().1, FX_NO_SUCH_FILE);

    // Reads are capped whatever the client asks, and say EOF past the end.
    let handle = raw.open(3, "data").handle(3);
    let read = |raw: &mut Raw, id, offset, len| {
        raw.request(
            SSH_FXP_READ,
            Body::default().u32(id).string(&handle).u64(offset).u32(len),
        )
    };
    let mut data = read(&mut raw, 4, 0, 64 * 1024 * 1024);
    assert_eq!(data.kind, SSH_FXP_DATA);
    assert_eq!(data.u32(), 4);
    assert_eq!(data.string().len(), 255 * 1024);
    assert_eq!(
        read(&mut raw, 5, 1024 * 1024, 10).status(),
        (5, FX_EOF, "end of file".into())
    );

    let unknown = raw.request(
        SSH_FXP_READ,
        Body::default().u32(6).string(b"nope").u64(0).u32(10),
    );
    assert_eq!(unknown.status().1, FX_FAILURE);

    // Unknown and malformed requests are answered with their own id.
    let (id, code, _) = raw.request(99, Body::default().u32(7)).status();
    assert_eq!((id, code), (7, FX_OP_UNSUPPORTED));
    let truncated = raw.request(SSH_FXP_OPEN, Body::default().u32(8).u32(1000));
    let (id, code, _) = truncated.status();
    assert_eq!((id, code), (8, FX_BAD_MESSAGE));

    // At most 1024 handles at once (one is open already); closing one frees a slot.
    for id in 0..1023 {
        raw.open(100 + id, "data").handle(100 + id);
    }
    let (id, code, message) = raw.open(9, "data").status();
    assert_eq!((id, code), (9, FX_FAILURE));
    assert!(message.contains("too many open handles"), "{message}");
    let close = raw.request(SSH_FXP_CLOSE, Body::default().u32(10).string(&handle));
    assert_eq!(close.status().1, 0);
    raw.open(11, "data").handle(11);

    let (ok, stderr) = raw.finish();
    assert!(ok, "server failed at end of session: {stderr}");
}

#[test]
fn an_oversized_packet_ends_the_session() {
    let sandbox = Sandbox::new();
    let mut raw = Raw::start(sandbox.home());
    assert_eq!(
        raw.request(SSH_FXP_INIT, Body::default().u32(3)).kind,
        SSH_FXP_VERSION
    );
    // Claim a 1 GiB packet: the server must not wait for (or allocate) it.
    raw.stdin
        .as_mut()
        .unwrap()
        .write_all(&(1u32 << 30).to_be_bytes())
        .unwrap();
    let mut rest = Vec::new();
    raw.stdout.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "no reply to a packet that cannot be framed"
    );
    let (ok, stderr) = raw.finish();
    assert!(!ok, "a broken stream is an error exit");
    assert!(stderr.contains("exceeds"), "the error says why: {stderr}");
}
