//! Real git repositories for the devcontainer tests: bare repositories on this
//! host served over git's smart HTTP (`git http-backend` behind a few lines of
//! Python), reachable from the runner host (which reads devcontainer.json and
//! build contexts) and from containers (which clone) at the Docker bridge's
//! address. Unlike [`crate::git_http`], anyone may read them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tempfile::TempDir;

use crate::ChildGuard;
use crate::stack::docker_host_ip;

/// Git's smart HTTP for the repositories under a root: `git http-backend` as a CGI.
const GIT_HTTP: &str = r#"
import http.server, os, subprocess, sys
root, port = sys.argv[1], int(sys.argv[2])
class Git(http.server.BaseHTTPRequestHandler):
    def serve(self):
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   REQUEST_METHOD=self.command, PATH_INFO=path, QUERY_STRING=query,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_ADDR="127.0.0.1",
                   HTTP_GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    do_GET = do_POST = serve
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), Git).serve_forever()
"#;

/// Repositories served over HTTP on `port` (which the runner must let sandboxes
/// reach: `--host-tcp-port PORT`), until dropped.
pub struct GitServer {
    root: TempDir,
    host_ip: String,
    port: u16,
    _server: ChildGuard,
}

impl GitServer {
    /// Serves an empty root on `port`.
    pub fn start(port: u16) -> Result<GitServer> {
        let root = TempDir::new()?;
        let server = ChildGuard::spawn(
            std::process::Command::new("python3")
                .args(["-c", GIT_HTTP])
                .arg(root.path())
                .arg(port.to_string())
                .stdout(std::process::Stdio::null()),
        )?;
        Ok(GitServer {
            root,
            host_ip: docker_host_ip()?,
            port,
            _server: server,
        })
    }

    /// The clone URL of repository `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}:{}/{name}.git", self.host_ip, self.port)
    }

    /// The address sandboxes reach this host at.
    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }

    /// Makes repository `name` with one commit holding `files`, and waits until the
    /// server answers for it.
    pub fn repository(&self, name: &str, files: &[(&str, &str)]) -> Result<String> {
        let root = self.root.path();
        let work = root.join(format!("{name}-work"));
        std::fs::create_dir_all(&work)?;
        git(&work, &["init", "-q", "-b", "main"])?;
        for (path, text) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            std::fs::write(path, text)?;
        }
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-qm", "first"])?;
        git(
            root,
            &[
                "clone",
                "-q",
                "--bare",
                &work.to_string_lossy(),
                &format!("{name}.git"),
            ],
        )?;
        let url = self.url(name);
        wait_for_server(&url)?;
        Ok(url)
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@e"])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Polls until the server answers git for `url`.
fn wait_for_server(url: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("git")
            .args(["ls-remote", url])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the git server never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
