//! Git on the runner host, never in a workspace: a pull request's push from a bare
//! repository of the runner's own to the pinned URL ([`push_pinned`]), and one file
//! read from a repository before its sandbox exists ([`read_file_at`], for
//! devcontainer.json). Git reads no config here but its command line's, only the
//! URL's transport is allowed, and a token reaches only the askpass helper.

use super::*;

/// A push's pinned remote: `https://host[:port]/path` (or `http://`, which the
/// gateway passes on only where its operator allows it).
pub(super) struct Pinned<'a> {
    url: &'a str,
    scheme: &'static str,
    /// `scheme://host[:port]`, lowercase: the only place the askpass helper
    /// answers for.
    origin: String,
}

impl<'a> Pinned<'a> {
    pub(super) fn parse(url: &'a str) -> Option<Pinned<'a>> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            ("https", rest)
        } else {
            ("http", url.strip_prefix("http://")?)
        };
        let (authority, _) = rest.split_once('/')?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let shape = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
            && url.bytes().all(|b| b.is_ascii_graphic())
            && !url.contains("::");
        shape.then(|| Pinned {
            url,
            scheme,
            origin: format!("{scheme}://{}", host.to_ascii_lowercase()),
        })
    }
}

/// The push's scratch directory: made empty and private (0700), removed when
/// dropped.
struct Scratch<'a>(&'a Path);

impl<'a> Scratch<'a> {
    fn make(dir: &'a Path) -> crate::Result<Scratch<'a>> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::failed(format_args!(
                    "clearing {}: {e}",
                    dir.display()
                )));
            }
        }
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

/// Takes `branch` out of the workspace as a bundle and pushes it to `remote` from
/// a bare repository of the runner's own; returns the commit pushed (the bundle's,
/// whatever the workspace said before). Nothing in the workspace sees the token.
pub(super) async fn push_pinned<E: GitExec>(
    exec: &E,
    place: &PushPlace<'_>,
    remote: &Pinned<'_>,
    branch: &str,
    token: Option<&str>,
) -> crate::Result<String> {
    let _scratch = Scratch::make(&place.scratch)?;
    let local = format!("refs/heads/{branch}");
    let bundle = place.scratch.join("work.bundle");
    let mut out = BoundedFile::create(&bundle, MAX_BUNDLE).await?;
    let mut args: Vec<&str> = SAFE_CONFIG.to_vec();
    args.extend(["bundle", "create", "-", &local]);
    let made = exec.git_to_file(&args, &mut out).await?;
    out.finish().await?;
    drop(out);
    if !made.ok() {
        return Err(Error::failed(format_args!(
            "git bundle failed in the workspace (exit {}): {}",
            made.code,
            redact(made.stderr.trim(), None)
        )));
    }
    let host = HostRepo::new(place)?;
    host.must(&["init", "--quiet", "--bare", "--template="], None)
        .await?;
    let bundle = bundle.to_string_lossy();
    let fetch = format!("+{local}:refs/warren/push");
    host.must(
        &[
            // A bundle is read through the file transport.
            "-c",
            "protocol.file.allow=always",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &bundle,
            &fetch,
        ],
        None,
    )
    .await
    .map_err(|e| Error::failed(format_args!("the workspace's bundle: {e:#}")))?;
    let commit = host
        .must(
            &["rev-parse", "--verify", "refs/warren/push^{commit}"],
            None,
        )
        .await?;
    let allow = format!("protocol.{}.allow=always", remote.scheme);
    let refspec = format!("refs/warren/push:refs/heads/{branch}");
    let pushed = host
        .run(
            &[
                "-c",
                &allow,
                "push",
                "--quiet",
                "--no-verify",
                "--",
                remote.url,
                &refspec,
            ],
            token.map(|t| (t, remote.origin.as_str())),
        )
        .await?;
    if !pushed.ok() {
        let message = redact(pushed.stderr.trim(), token);
        return Err(Error::refused(
            "push_refused",
            format!("the remote refused the push: {message}"),
        ));
    }
    Ok(commit)
}

/// One shallow commit of `reference` of `url` fetched into `place.scratch`, blobs
/// over `max` bytes left on the server where it can filter them: the scratch
/// directory (removed when dropped) and the repository that holds it.
async fn fetch_one_commit<'a>(
    place: &'a PushPlace<'_>,
    url: &str,
    reference: Option<&str>,
    token: Option<&str>,
    max: usize,
) -> crate::Result<(Scratch<'a>, HostRepo)> {
    let remote = Pinned::parse(url).ok_or_else(|| {
        Error::failed(format_args!(
            "not an http(s) repository URL: {}",
            redact(url, None)
        ))
    })?;
    let scratch = Scratch::make(&place.scratch)?;
    let host = HostRepo::new(place)?;
    host.fetch_commit(&remote, url, reference, token, max)
        .await?;
    Ok((scratch, host))
}

/// The first of `paths` that exists at `reference` (default: the remote's HEAD) of
/// `url`, with its text: one shallow commit fetched into `place.scratch` (removed
/// after) with blobs over `max` bytes left on the server where it can filter them,
/// nothing checked out, nothing of the repository run. A file over `max` bytes is an
/// error. `token`, as for pushes, goes to git only through the askpass helper.
pub async fn read_file_at(
    place: &PushPlace<'_>,
    url: &str,
    reference: Option<&str>,
    paths: &[&str],
    token: Option<&str>,
    max: usize,
) -> crate::Result<Option<(String, String)>> {
    let (_scratch, host) = fetch_one_commit(place, url, reference, token, max).await?;
    for path in paths {
        let object = format!("refs/warren/file:{path}");
        let kind = host.run(&["cat-file", "-t", &object], None).await?;
        if !kind.ok() {
            // Not in the tree, or a blob the filter left behind (too large).
            let listed = host
                .run(
                    &["ls-tree", "--name-only", "refs/warren/file", "--", path],
                    None,
                )
                .await?;
            if listed.ok() && !listed.stdout.trim().is_empty() {
                return Err(too_large(path, max));
            }
            continue;
        }
        if kind.stdout.trim() != "blob" {
            continue;
        }
        let size: usize = host
            .must(&["cat-file", "-s", &object], None)
            .await?
            .parse()
            .unwrap_or(usize::MAX);
        if size > max {
            return Err(too_large(path, max));
        }
        let text = host.run(&["cat-file", "blob", &object], None).await?;
        if !text.ok() {
            return Err(Error::failed(format_args!(
                "reading {path}: {}",
                text.stderr.trim()
            )));
        }
        return Ok(Some(((*path).to_owned(), text.stdout)));
    }
    Ok(None)
}

/// A build's inputs from `reference` of `url`: the text of `file` (at most 64
/// KiB) and the directory `dir` ("" for the top) as a tar archive of at most
/// `max_total` bytes, no blob over `max_blob`, with its tree id. One shallow commit fetched into
/// `place.scratch` (removed after) as [`read_file_at`] does, nothing checked out:
/// `git archive` writes the tree straight from the object store.
#[allow(clippy::too_many_arguments)]
pub async fn read_tree_at(
    place: &PushPlace<'_>,
    url: &str,
    reference: Option<&str>,
    file: &str,
    dir: &str,
    token: Option<&str>,
    max_blob: usize,
    max_total: usize,
) -> crate::Result<TreeRead> {
    let (_scratch, host) = fetch_one_commit(place, url, reference, token, max_blob).await?;
    let object = format!("refs/warren/file:{file}");
    let kind = host.run(&["cat-file", "-t", &object], None).await?;
    if kind.stdout.trim() != "blob" {
        return Err(Error::refused(
            "invalid_spec",
            format!("{file} is not a file of the repository (or is larger than {max_blob} bytes)"),
        ));
    }
    let size: usize = host
        .must(&["cat-file", "-s", &object], None)
        .await?
        .parse()
        .unwrap_or(usize::MAX);
    if size > 64 * 1024 {
        return Err(too_large(file, 64 * 1024));
    }
    let text = host.must(&["cat-file", "blob", &object], None).await?;
    let tree = if dir.is_empty() {
        "refs/warren/file^{tree}".to_owned()
    } else {
        format!("refs/warren/file:{dir}")
    };
    // The tree's id names its content exactly (the archive does not: a tree's
    // entries get the current time).
    let id = host.must(&["rev-parse", "--verify", &tree], None).await?;
    let tar = host.archive(&tree, max_total).await?;
    Ok(TreeRead {
        file: text,
        tar,
        id,
    })
}

/// What [`read_tree_at`] read.
pub struct TreeRead {
    /// The text of the file asked for.
    pub file: String,
    /// The directory, as a tar archive.
    pub tar: Vec<u8>,
    /// The directory's git tree id.
    pub id: String,
}

fn too_large(path: &str, max: usize) -> Error {
    Error::refused("too_large", format!("{path} is larger than {max} bytes"))
}

/// Settings of every git run on the runner's side of a push: no transport but the
/// one a command adds, no redirects (a token for one host never follows one to
/// another), no helpers, hooks, monitor or signing.
const HOST_CONFIG: [&str; 14] = [
    "-c",
    "protocol.allow=never",
    "-c",
    "http.followRedirects=false",
    "-c",
    "credential.helper=",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.askPass=",
];

/// The runner's environment variables a push may use: where git is, and the
/// operator's proxy and certificate settings. Nothing else of the runner's (or of
/// any sandbox's) environment reaches it.
const HOST_ENV: [&str; 13] = [
    "PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Git on the runner host in the bare repository `<scratch>/repo.git`, reading no
/// configuration file (no system or global config, a clean environment, `HOME` in
/// the scratch directory): only what its command line says.
struct HostRepo {
    scratch: PathBuf,
    askpass: PathBuf,
}

impl HostRepo {
    fn new(place: &PushPlace<'_>) -> Result<HostRepo> {
        let target = std::fs::canonicalize(place.agent_bin)
            .with_context(|| format!("finding {}", place.agent_bin.display()))?;
        let askpass = place.scratch.join("askpass");
        std::os::unix::fs::symlink(&target, &askpass)
            .with_context(|| format!("creating {}", askpass.display()))?;
        Ok(HostRepo {
            scratch: place.scratch.clone(),
            askpass,
        })
    }

    /// `git <args>`; `secret` is the password and the only `scheme://host` the
    /// askpass helper gives it to.
    async fn run(&self, args: &[&str], secret: Option<(&str, &str)>) -> Result<GitOutput> {
        let mut cmd = self.command(args, secret);
        let out = cmd.output().await.context("running git")?;
        Ok(GitOutput {
            code: out.status.code().map_or(-1, i64::from),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// The command [`Self::run`] runs.
    fn command(&self, args: &[&str], secret: Option<(&str, &str)>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear();
        for name in HOST_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        cmd.args(HOST_CONFIG)
            .args(args)
            .current_dir(&self.scratch)
            .env("GIT_DIR", self.scratch.join("repo.git"))
            .env("HOME", &self.scratch)
            .env("XDG_CONFIG_HOME", &self.scratch)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_SYSTEM", "/dev/null")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &self.askpass)
            // A partial fetch's missing blobs stay missing: never fetched behind
            // a command's back.
            .env("GIT_NO_LAZY_FETCH", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some((password, origin)) = secret {
            cmd.env("WARREN_GIT_PASSWORD", password)
                .env("WARREN_GIT_ORIGIN", origin);
        }
        cmd
    }

    /// Fetches one commit of `reference` (default: the remote's HEAD) of `url`
    /// as `refs/warren/file` into a new bare repository, blobs over `max_blob`
    /// left on the server where it can filter them.
    async fn fetch_commit(
        &self,
        remote: &Pinned<'_>,
        url: &str,
        reference: Option<&str>,
        token: Option<&str>,
        max_blob: usize,
    ) -> crate::Result<()> {
        self.must(&["init", "--quiet", "--bare", "--template="], None)
            .await?;
        let allow = format!("protocol.{}.allow=always", remote.scheme);
        let filter = format!("--filter=blob:limit={}", max_blob + 1);
        let refspec = format!("+{}:refs/warren/file", reference.unwrap_or("HEAD"));
        self.must(&["remote", "add", "origin", remote.url], None)
            .await?;
        let fetched = self
            .run(
                &[
                    "-c",
                    &allow,
                    "fetch",
                    "--quiet",
                    "--depth",
                    "1",
                    "--no-tags",
                    "--no-write-fetch-head",
                    &filter,
                    "origin",
                    "--",
                    &refspec,
                ],
                token.map(|t| (t, remote.origin.as_str())),
            )
            .await?;
        if !fetched.ok() {
            return Err(Error::failed(format_args!(
                "fetching {}: {}",
                redact(url, token),
                redact(fetched.stderr.trim(), token)
            )));
        }
        Ok(())
    }

    /// `git archive --format=tar <tree>`, read up to `max` bytes: more, or a blob
    /// the filter left on the server, is a refusal.
    async fn archive(&self, tree: &str, max: usize) -> crate::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut cmd = self.command(&["archive", "--format=tar", tree], None);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("running git archive")?;
        let mut stdout = child.stdout.take().context("git archive's stdout")?;
        let mut stderr = child.stderr.take().context("git archive's stderr")?;
        let mut tar = Vec::new();
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        let mut bounded = (&mut stdout).take(limit);
        let (read, errors) = tokio::join!(bounded.read_to_end(&mut tar), async {
            let mut text = String::new();
            let _ = (&mut stderr)
                .take(64 * 1024)
                .read_to_string(&mut text)
                .await;
            text
        });
        read.context("reading git archive")?;
        if tar.len() > max {
            let _ = child.kill().await;
            return Err(Error::refused(
                "too_large",
                format!("the build context is larger than {max} bytes"),
            ));
        }
        let status = child.wait().await.context("git archive")?;
        if !status.success() {
            return Err(Error::refused(
                "invalid_spec",
                format!(
                    "the build context could not be read (a file over the size limit, or not \
                     a directory): {}",
                    errors.lines().next().unwrap_or("").trim()
                ),
            ));
        }
        Ok(tar)
    }

    async fn must(&self, args: &[&str], secret: Option<(&str, &str)>) -> Result<String> {
        let out = self.run(args, secret).await?;
        if !out.ok() {
            anyhow::bail!(
                "git {} failed (exit {}): {}",
                args.iter()
                    .find(|a| !a.starts_with('-') && !a.contains('='))
                    .copied()
                    .unwrap_or_default(),
                out.code,
                redact(out.stderr.trim(), secret.map(|(p, _)| p))
            );
        }
        Ok(out.stdout.trim().to_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_pinned() {
        let pinned = Pinned::parse("https://x:t@GitHub.com:8443/acme/widgets.git").unwrap();
        assert_eq!(
            (pinned.scheme, pinned.origin.as_str()),
            ("https", "https://github.com:8443")
        );
        assert_eq!(
            Pinned::parse("http://10.0.0.5/a/b").map(|p| p.origin),
            Some("http://10.0.0.5".to_owned())
        );
        for url in [
            "origin",
            "/srv/repo.git",
            "file:///srv/repo.git",
            "ext::sh -c id",
            "ssh://git@github.com/a/b",
            "git@github.com:a/b",
            "git://github.com/a/b",
            "https://github.com",
            "https://gith ub.com/a/b",
            "https:///a/b",
        ] {
            assert!(Pinned::parse(url).is_none(), "{url}");
        }
    }
}
