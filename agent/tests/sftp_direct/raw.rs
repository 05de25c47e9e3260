//! Raw SFTP, packet by packet: what no OpenSSH command can provoke (protocol limits,
//! status codes, an oversized packet).

use super::*;

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
