//! Field checks for API input. Every check runs before anything is changed, and no
//! message echoes the refused value (it may be a secret pasted in the wrong place).
//! What a sandbox spec may say is `warren_protocol::validate`'s, shared with the
//! runners; the ranges here are the API's own.

use std::collections::BTreeMap;

use warren_protocol::NetworkPolicy;
use warren_protocol::validate as spec;

use super::Error;

pub const CPUS: (f64, f64) = (0.1, 16.0);
pub const MEMORY_MB: (u32, u32) = (128, 65_536);
/// A disk quota: 256 MiB (a file system and a checkout) to 1 TiB.
pub const DISK_MB: (u32, u32) = (256, 1_048_576);
pub const IDLE_TIMEOUT_S: (u32, u32) = (60, 604_800);
/// A sandbox lives at most a year.
pub const TTL_S: (u32, u32) = (60, 31_536_000);
pub fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    (min, max): (T, T),
) -> Result<T, Error> {
    // `!(a <= b)` so NaN fails too.
    if !(min <= value && value <= max) {
        return Err(Error::invalid(format!(
            "{field} must be between {min} and {max}"
        )));
    }
    Ok(value)
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, not `WARREN_*`.
pub fn env_name(name: &str) -> Result<(), Error> {
    spec::env_name(name).map_err(invalid)
}

pub fn env(env: &BTreeMap<String, String>) -> Result<(), Error> {
    spec::env(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(invalid)
}

/// A Docker image reference ([`spec::image`]).
pub fn image(reference: &str) -> Result<(), Error> {
    spec::image(reference).map_err(invalid)
}

/// A git branch name ([`spec::branch`]).
pub fn branch(name: &str) -> Result<(), Error> {
    spec::branch(name).map_err(invalid)
}

/// How a repository is reached: the only transports the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoTransport {
    Https,
    /// Plain `http://`: the token would cross the network in the clear, so only
    /// where the operator allows it ([`super::Lifecycle::allows_http_repos`]).
    Http,
}

/// A repository to clone and to push pull requests to: `https://host[:port]/path`
/// (or `http://`, see [`RepoTransport::Http`]). Local paths, `file://`, `ssh://`,
/// scp-like `host:path`, `git://` and git's `transport::address` forms are refused:
/// a path names the runner's own disk, and the others either carry no token or
/// run programs of git's choosing.
pub fn repo(url: &str) -> Result<RepoTransport, Error> {
    spec::repo(url).map_err(invalid)?;
    let err = || {
        Error::invalid(
            "repo must be an https:// URL of a remote repository (local paths, file://, \
             ssh and other git transports are not supported)",
        )
    };
    let (transport, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (RepoTransport::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (RepoTransport::Http, rest)
    } else {
        return Err(err());
    };
    let (authority, path) = rest.split_once('/').ok_or_else(err)?;
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if !host_ok || path.trim_matches('/').is_empty() {
        return Err(err());
    }
    Ok(transport)
}

pub fn network(policy: &NetworkPolicy) -> Result<(), Error> {
    spec::network(policy).map_err(invalid)
}

fn invalid(e: spec::SpecError) -> Error {
    Error::invalid(e.to_string())
}

/// A display name (of a key): 1 to 128 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<(), Error> {
    if (1..=128).contains(&value.chars().count()) && !value.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} must be 1 to 128 characters without control characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(range("cpus", f64::NAN, CPUS).is_err());
        assert!(range("cpus", 0.05, CPUS).is_err());
        assert!(range("cpus", 0.1, CPUS).is_ok());
        assert!(range("memory_mb", 65_537, MEMORY_MB).is_err());
        assert!(range("disk_mb", 255, DISK_MB).is_err());
        assert!(range("disk_mb", 1024, DISK_MB).is_ok());
    }

    #[test]
    fn repositories_are_remote_https() {
        for good in [
            "https://github.com/acme/widgets.git",
            "https://ghe.example.com:8443/acme/widgets",
            "https://[2001:db8:0:0:0:0:0:1]:8443/acme/widgets",
        ] {
            assert_eq!(repo(good).ok(), Some(RepoTransport::Https), "{good}");
        }
        assert_eq!(
            repo("http://10.0.0.5/acme/widgets.git").ok(),
            Some(RepoTransport::Http)
        );
        for bad in [
            "/x",
            "/etc",
            "file:///etc",
            "FILE:///etc",
            "file://localhost/etc",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::0",
            "fd::3,4",
            "ssh://git@github.com/acme/widgets.git",
            "git@github.com:acme/widgets.git",
            "git://github.com/acme/widgets.git",
            "https://",
            "https:///etc",
            "https://github.com",
            "https://github.com/",
            "https://gith\\ub.com/a/b",
            "--upload-pack=touch /tmp/pwned",
            "../../etc",
            "HTTPS://github.com/a/b",
        ] {
            assert!(repo(bad).is_err(), "{bad}");
        }
    }
}
