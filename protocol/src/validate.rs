//! What a sandbox spec may say: one set of rules, used by the gateway's API before
//! anything is stored and by every runner backend as a last check
//! ([`SandboxSpec::validate`]). No message echoes the refused value (it may be a
//! secret pasted in the wrong place).

use std::fmt;

use ipnet::Ipv4Net;

use crate::{NetworkPolicy, SandboxSpec};

/// Why a spec is refused; safe to show (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(String);

impl SpecError {
    fn new(message: impl Into<String>) -> SpecError {
        SpecError(message.into())
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_VALUE: usize = 32 * 1024;
pub const MAX_ENV_NAME: usize = 128;
pub const MAX_IMAGE: usize = 255;
pub const MAX_REPO: usize = 2048;
pub const MAX_BRANCH: usize = 255;
pub const MAX_CIDRS: usize = 64;
/// A disk quota in MiB: enough for a file system's own metadata, at most 16 TiB.
pub const DISK_MB: (u64, u64) = (64, 16 << 20);

impl SandboxSpec {
    /// Every rule a spec's fields must follow.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(reference) = &self.image {
            image(reference)?;
        }
        env(self.env.iter().map(|(k, v)| (k.as_str(), v.expose())))?;
        if let Some(r) = &self.repo {
            repo(&r.url)?;
            branch(&r.branch)?;
            if let Some(base) = &r.base {
                branch(base).map_err(|_| SpecError::new("base is not a valid branch name"))?;
            }
        }
        if let Some(mb) = self.disk_mb {
            disk_mb(mb)?;
        }
        if let Some(name) = &self.user {
            user(name)?;
        }
        if let Some(path) = &self.workdir {
            workdir(path)?;
        }
        network(&self.network)
    }
}

/// A session user's name: `[A-Za-z_][A-Za-z0-9_.-]*`, at most 32 characters, not
/// `root` (a uid is looked up to its name first; uid 0 never gets this far).
pub fn user(name: &str) -> Result<(), SpecError> {
    let shape = (1..=32).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !shape || name == "root" {
        return Err(SpecError::new(
            "user must be an account name of the image ([A-Za-z_][A-Za-z0-9_.-]*, at most 32 \
             characters), never root",
        ));
    }
    Ok(())
}

/// The top directories a workspace may never be put over: the system's own, and
/// the ones Warren mounts itself.
const SYSTEM_DIRS: [&str; 20] = [
    "bin",
    "boot",
    "dev",
    "etc",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "proc",
    "root",
    "run",
    "sbin",
    "sys",
    "usr",
    "var",
    "tmp",
    "nix",
    "snap",
    ".warren",
    "lost+found",
];

/// A workspace folder: an absolute path of at most 8 plain components
/// (`[A-Za-z0-9._-]`, no `.` or `..`), at most 200 bytes, under none of
/// [`SYSTEM_DIRS`], and not inside `/workspace` (the repository itself).
pub fn workdir(path: &str) -> Result<(), SpecError> {
    let err = || {
        SpecError::new(
            "the workspace folder must be an absolute path of plain names ([A-Za-z0-9._-], \
             no . or ..), at most 8 deep, outside the system's directories (/usr, /etc, \
             /proc, …)",
        )
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(err());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let plain = |c: &&str| {
        !c.is_empty()
            && *c != "."
            && *c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if path.len() > 200
        || parts.len() > 8
        || !parts.iter().all(plain)
        || SYSTEM_DIRS.contains(&parts[0])
        // Inside the workspace is the repository's own tree, not a place to mount it.
        || (parts[0] == "workspace" && parts.len() > 1)
    {
        return Err(err());
    }
    Ok(())
}

/// A disk quota in MiB, within [`DISK_MB`].
pub fn disk_mb(mb: u64) -> Result<(), SpecError> {
    let (min, max) = DISK_MB;
    if !(min..=max).contains(&mb) {
        return Err(SpecError::new(format!(
            "disk_mb must be between {min} and {max}"
        )));
    }
    Ok(())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, not `WARREN_*`.
pub fn env_name(name: &str) -> Result<(), SpecError> {
    let shape = (1..=MAX_ENV_NAME).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !shape {
        return Err(SpecError::new(format!(
            "env names must match [A-Za-z_][A-Za-z0-9_]* (at most {MAX_ENV_NAME} characters)"
        )));
    }
    if name.to_ascii_uppercase().starts_with("WARREN_") {
        return Err(SpecError::new(
            "env names starting with WARREN_ are reserved",
        ));
    }
    Ok(())
}

/// A sandbox's env, as (name, value) pairs: the spec's [`Secret`](crate::Secret)
/// values exposed for the check, or the API's request as given.
pub fn env<'a>(env: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> Result<(), SpecError> {
    if env.len() > MAX_ENV_VARS {
        return Err(SpecError::new(format!(
            "at most {MAX_ENV_VARS} env variables"
        )));
    }
    for (name, value) in env {
        env_name(name)?;
        if value.len() > MAX_ENV_VALUE {
            return Err(SpecError::new(format!(
                "env value of {name} is longer than {MAX_ENV_VALUE} bytes"
            )));
        }
        if value.contains('\0') {
            return Err(SpecError::new(format!(
                "env value of {name} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A registry host: DNS labels (letters, digits, `-`) separated by dots, an
/// optional `:port`.
fn registry_host(c: &str) -> bool {
    let (host, port) = match c.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// A Docker image reference: `[host[:port]/]path[:tag][@algo:hex]`, as the
/// distribution spec's grammar allows (lowercase path components, tags of
/// `[A-Za-z0-9_.-]` up to 128, hex digests).
pub fn image(reference: &str) -> Result<(), SpecError> {
    let err = || SpecError::new("image is not a valid image reference");
    if reference.is_empty() || reference.len() > MAX_IMAGE {
        return Err(err());
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d.split_once(':').ok_or_else(err)?;
        let algo_ok = !algo.is_empty()
            && algo
                .bytes()
                .all(|b| is_lower_alnum(b) || b"+._-".contains(&b));
        let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !(algo_ok && hex_ok) {
            return Err(err());
        }
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let ok = (1..=128).contains(&tag.len())
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(err());
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        let is_host = first.contains('.') || first.contains(':') || first == "localhost";
        if is_host {
            if !registry_host(first) {
                return Err(err());
            }
            components.remove(0);
        }
    }
    if components.is_empty() || !components.iter().all(|c| path_component(c)) {
        return Err(err());
    }
    Ok(())
}

/// A branch name git accepts (`git check-ref-format --branch`), a little stricter:
/// printable ASCII only.
pub fn branch(name: &str) -> Result<(), SpecError> {
    let err = || SpecError::new("branch is not a valid git branch name");
    if name.is_empty() || name.len() > MAX_BRANCH {
        return Err(err());
    }
    let bad_char = name
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b"~^:?*[\\".contains(&b));
    if bad_char
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || name == "@"
        || name
            .split('/')
            .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return Err(err());
    }
    Ok(())
}

/// A repository to clone: an `https://`, `http://`, `ssh://`, `git://` or
/// `file://` URL, an scp-like `user@host:path`, or an absolute path on the runner.
/// No whitespace or control characters, nothing git could read as an option.
pub fn repo(url: &str) -> Result<(), SpecError> {
    let err = || SpecError::new("repo is not a supported repository URL");
    if url.is_empty() || url.len() > MAX_REPO {
        return Err(err());
    }
    // `::` is git's transport syntax (`ext::…`, `fd::…`).
    if url.bytes().any(|b| !b.is_ascii_graphic()) || url.starts_with('-') || url.contains("::") {
        return Err(err());
    }
    let schemes = ["https://", "http://", "ssh://", "git://", "file://"];
    if let Some(scheme) = schemes.iter().find(|s| url.starts_with(**s)) {
        let rest = &url[scheme.len()..];
        // file:///path has an empty host; the others need one.
        if rest.is_empty() || (*scheme != "file://" && rest.starts_with('/')) {
            return Err(err());
        }
        return Ok(());
    }
    if url.contains("://") {
        return Err(err());
    }
    if url.starts_with('/') {
        return Ok(());
    }
    // scp-like: [user@]host:path, host without '/'.
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty() => Ok(()),
        _ => Err(err()),
    }
}

/// An IPv4 CIDR block, `a.b.c.d/n` with `n` from 0 to 32 (one or two digits), as
/// `ipnet` reads it: the prefix is required, host bits may be set (`10.0.0.1/8`
/// is `10.0.0.1/8`, as iptables takes it). The one parser of network policies
/// (the gateway's check, the runner's firewall rules) and the runner's
/// `--network-pool`.
pub fn parse_cidr(block: &str) -> Result<Ipv4Net, SpecError> {
    block
        .parse()
        .map_err(|_| SpecError::new("an IPv4 CIDR block like 10.0.0.0/8 was expected"))
}

pub fn network(policy: &NetworkPolicy) -> Result<(), SpecError> {
    if let NetworkPolicy::Allow { cidrs } = policy {
        if cidrs.len() > MAX_CIDRS {
            return Err(SpecError::new(format!(
                "network.cidrs: at most {MAX_CIDRS} blocks"
            )));
        }
        if !cidrs.iter().all(|c| parse_cidr(c).is_ok()) {
            return Err(SpecError::new(
                "network.cidrs must be IPv4 CIDR blocks like 10.0.0.0/8",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn users_and_workdirs() {
        for ok in ["vscode", "node", "_svc", "dev.user-1", "A"] {
            assert!(user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "root", "0", "1000", "a b", "a:b", "-x", &"x".repeat(33)] {
            assert!(user(bad).is_err(), "{bad}");
        }
        for ok in [
            "/workspaces/app",
            "/src",
            "/home/dev/proj",
            "/workspace",
            "/a.b/c_d-e",
        ] {
            assert!(workdir(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "relative",
            "/etc",
            "/usr/local/x",
            "/proc/1",
            "/.warren/run",
            "/tmp/x",
            "/a/../etc",
            "/a/./b",
            "/a//b",
            "/a/",
            "/a b",
            "/a/b/c/d/e/f/g/h/i",
            "/var/lib",
            "/workspace/app",
        ] {
            assert!(workdir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images() {
        for ok in [
            "debian",
            "debian:12",
            "python:3.12-slim",
            "library/node:22",
            "ghcr.io/owner/repo:v1.2.3",
            "localhost:5000/warren-base:latest",
            "registry.example.com/a/b/c",
            "warren-base:latest",
            "a__b",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Debian",
            "../../etc/passwd",
            "debian:",
            "debian; rm -rf /",
            "'; DROP TABLE sandboxes; --",
            "-debian",
            "a//b",
            "a:b:c",
            "debian@sha256:xyz",
            "debian:-x",
            " debian",
        ] {
            assert!(image(bad).is_err(), "{bad:?}");
        }
        assert!(image(&"a".repeat(256)).is_err());
    }

    #[test]
    fn branches() {
        for ok in ["main", "warren/sbx-abc", "feature/x.y", "v1"] {
            assert!(branch(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a~1", "a^", "a:b", "x.lock", "/a", "a/", "a//b", ".a",
            "a/.b", "@", "a@{1}", "é", "a\n",
        ] {
            assert!(branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repos() {
        for ok in [
            "https://github.com/o/r.git",
            "http://git.local/r",
            "ssh://git@host/o/r",
            "git@github.com:o/r.git",
            "file:///srv/git/r.git",
            "/srv/git/r.git",
        ] {
            assert!(repo(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "--upload-pack=evil",
            "ext::sh -c evil",
            "ext::sh",
            "https:///x",
            "https://a b",
            "ftp://x/y",
            "relative/path",
            "../../etc",
        ] {
            assert!(repo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_x", "ANTHROPIC_API_KEY", "lower_1"] {
            assert!(env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "WARREN_X", "warren_x", "A B", "A=B", "É"] {
            assert!(env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs() {
        let cidr = |block: &str| parse_cidr(block).is_ok();
        // The gateway's cases: a policy's blocks.
        assert!(cidr("10.0.0.0/8") && cidr("0.0.0.0/0") && cidr("1.2.3.4/32"));
        assert!(!cidr("10.0.0.0/33") && !cidr("10.0.0.0") && !cidr("::/0") && !cidr("a/8"));
        assert!(!cidr("10.0.0.0/") && !cidr("10.0.0.0/008") && !cidr(" 10.0.0.0/8"));
        // The runner's: what becomes an iptables argument, and `--network-pool`.
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert_eq!(
            (net.addr(), net.prefix_len()),
            (Ipv4Addr::new(10, 0, 0, 0), 8)
        );
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.1.2.3/8");
        assert!(parse_cidr("-j ACCEPT").is_err() && parse_cidr("::1/128").is_err());
        assert!(parse_cidr("10.0.0.0/8 -j ACCEPT").is_err());
        // The error never echoes the value.
        let e = parse_cidr("sk-secret/8").unwrap_err();
        assert!(!e.to_string().contains("sk-secret"), "{e}");
    }

    #[test]
    fn a_branch_with_a_hash_passes_as_git_allows_it() {
        // The gateway and the runner once disagreed on this one.
        assert!(branch("fix#1").is_ok());
    }

    proptest::proptest! {
        /// Total: any input gives an answer, never a panic; and what passes has
        /// nothing git or a shell could read as an option or a control character.
        #[test]
        fn rules_are_total(text in "\\PC{0,80}") {
            let _ = image(&text);
            let _ = repo(&text);
            let _ = env_name(&text);
            let _ = parse_cidr(&text);
            if branch(&text).is_ok() {
                proptest::prop_assert!(!text.starts_with('-'));
                proptest::prop_assert!(text.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
