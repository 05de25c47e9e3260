//! Stand-ins for a git host, for the pull-request tests: bare repositories on this
//! host served over git's smart HTTP (`git http-backend` as a CGI), answering only
//! requests that carry the test token, and a small GitHub stand-in for the two
//! endpoints Warren uses (create, merge). Both record what they are sent.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The token the sandboxes are given and the stand-ins expect.
pub const TOKEN: &str = "ghp_TestOnlyToken0123456789abcdefXYZ";

// ---------------------------------------------------------------------------------
// What the HTTP stand-ins share: reading a request.

/// A request's head, and the bytes read past it.
struct Head {
    text: String,
    method: String,
    target: String,
    /// Names lowercase.
    headers: std::collections::HashMap<String, String>,
    rest: Vec<u8>,
}

impl Head {
    fn read(stream: &mut std::net::TcpStream) -> Result<Head> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            let n = stream.read(&mut chunk)?;
            ensure!(n > 0, "connection closed mid-request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let mut request = lines.next().unwrap_or_default().split(' ');
        let method = request.next().unwrap_or_default().to_owned();
        let target = request.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Ok(Head {
            text,
            method,
            target,
            headers,
            rest: buf[end..].to_vec(),
        })
    }

    fn header(&self, name: &str) -> String {
        self.headers.get(name).cloned().unwrap_or_default()
    }

    /// The body: `Content-Length` bytes, or chunked.
    fn body(&self, stream: &mut std::net::TcpStream) -> Result<Vec<u8>> {
        let mut raw = self.rest.clone();
        let mut fill = |raw: &mut Vec<u8>, want: usize| -> Result<()> {
            let mut chunk = [0u8; 8192];
            while raw.len() < want {
                let n = stream.read(&mut chunk)?;
                ensure!(n > 0, "connection closed mid-body");
                raw.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        };
        if !self
            .header("transfer-encoding")
            .eq_ignore_ascii_case("chunked")
        {
            let length: usize = self.header("content-length").parse().unwrap_or(0);
            fill(&mut raw, length)?;
            raw.truncate(length);
            return Ok(raw);
        }
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(i) = raw[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + i;
                }
                let want = raw.len() + 1;
                fill(&mut raw, want)?;
            };
            let size = String::from_utf8_lossy(&raw[at..line_end]).into_owned();
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            let start = line_end + 2;
            fill(&mut raw, start + size + 2)?;
            body.extend_from_slice(&raw[start..start + size]);
            at = start + size + 2;
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// A GitHub stand-in: `POST /repos/{o}/{r}/pulls`, `PUT /repos/{o}/{r}/pulls/{n}/merge`.

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub accept: String,
    pub body: Value,
}

pub struct FakeGitHub {
    pub base: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeGitHub {
    pub fn start() -> Result<FakeGitHub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let recorded = recorded.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(&mut stream, &recorded);
                });
            }
        });
        Ok(FakeGitHub { base, requests })
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_one(stream: &mut std::net::TcpStream, recorded: &Mutex<Vec<Recorded>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = Head::read(stream)?;
    let body: Value = serde_json::from_slice(&head.body(stream)?).unwrap_or_default();
    let (method, path) = (head.method.clone(), head.target.clone());
    let authorization = head.header("authorization");
    recorded.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        accept: head.header("accept"),
        body: body.clone(),
    });
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (status, answer) = if authorization != format!("Bearer {TOKEN}") {
        (401, json!({"message": "Bad credentials"}))
    } else {
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["repos", o, r, "pulls"]) if body["title"] == "Duplicate" => (
                422,
                json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest",
                    "code": "custom",
                    "message": format!("A pull request already exists for {o}:{}.",
                        body["head"].as_str().unwrap_or_default())}],
                    "documentation_url": format!("https://docs.github.com/{r}")}),
            ),
            ("POST", ["repos", o, r, "pulls"]) => (
                201,
                json!({"number": 7, "html_url": format!("https://github.example/{o}/{r}/pull/7"),
                    "url": format!("https://api.github.example/repos/{o}/{r}/pulls/7")}),
            ),
            ("PUT", ["repos", _, _, "pulls", "7", "merge"]) => (
                200,
                json!({"sha": "0123abc", "merged": true,
                    "message": "Pull Request successfully merged"}),
            ),
            ("PUT", ["repos", _, _, "pulls", _, "merge"]) => (404, json!({"message": "Not Found"})),
            _ => (404, json!({"message": "Not Found"})),
        }
    };
    let text = answer.to_string();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Git on the host.

pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Seed", "-c", "user.email=seed@example.com"])
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A bare repository `<tmp>/acme/widgets.git` whose `main` has one commit.
pub fn bare_remote(tmp: &TempDir) -> Result<PathBuf> {
    let bare = tmp.path().join("acme").join("widgets.git");
    std::fs::create_dir_all(&bare)?;
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    )?;
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed)?;
    git(&seed, &["init", "--quiet", "--initial-branch=main"])?;
    std::fs::write(seed.join("README.md"), "# widgets\n")?;
    git(&seed, &["add", "README.md"])?;
    git(&seed, &["commit", "--quiet", "-m", "initial"])?;
    git(
        &seed,
        &["push", "--quiet", bare.to_str().context("path")?, "main"],
    )?;
    Ok(bare)
}

/// `Authorization: Basic` of `x-access-token:<TOKEN>` (what the askpass helper
/// answers git's username and password prompts with).
pub const BASIC: &str =
    "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX1Rlc3RPbmx5VG9rZW4wMTIzNDU2Nzg5YWJjZGVmWFla";

/// One request a [`GitHttp`] server was sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: String,
    /// Every header line, lowercase.
    pub head: String,
}

/// Git's smart HTTP protocol for the repositories under a root (`git http-backend`
/// as a CGI), answering only requests that carry [`BASIC`]; records every request.
pub struct GitHttp {
    /// `http://ADDR:PORT`.
    pub base: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl GitHttp {
    /// Serves `root` on `addr` (`127.0.0.1:0`, or an address containers reach).
    pub fn start(root: PathBuf, addr: &str) -> Result<GitHttp> {
        let listener = TcpListener::bind(addr)?;
        let base = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (root, recorded) = (root.clone(), recorded.clone());
                std::thread::spawn(move || {
                    let _ = serve_git(&mut stream, &root, &recorded);
                });
            }
        });
        Ok(GitHttp { base, seen })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that carried the token.
    pub fn authorized(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.authorization == BASIC)
            .count()
    }
}

fn serve_git(stream: &mut std::net::TcpStream, root: &Path, seen: &Mutex<Vec<Seen>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = Head::read(stream)?;
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    seen.lock().unwrap().push(Seen {
        path: path.to_owned(),
        authorization: head.header("authorization"),
        head: head.text.to_ascii_lowercase(),
    });
    if head.header("authorization") != BASIC {
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    if head.header("expect").eq_ignore_ascii_case("100-continue") {
        write!(stream, "HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = head.body(stream)?;
    let mut cgi = std::process::Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", head.header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (name, var) in [
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        if let Some(value) = head.headers.get(name) {
            cgi.env(var, value);
        }
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .context("no CGI header")?;
    let cgi_head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let mut status = "200 OK".to_owned();
    let mut extra = String::new();
    for line in cgi_head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => extra.push_str(&format!("{}\r\n", line.trim_end())),
            None => {}
        }
    }
    let payload = &out.stdout[split.1..];
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    stream.write_all(payload)?;
    stream.flush()?;
    Ok(())
}
