//! Turning client paths into filesystem paths: relative to home, `realpath`, and `~`.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::accounts::Accounts;
use super::error::{Result, SftpError};
use super::sys;

/// Where client paths start: relative paths under `cwd` (the process's working
/// directory, where the SSH side started us), `~` at `home`.
#[derive(Clone, Debug)]
pub(super) struct Roots {
    pub(super) cwd: PathBuf,
    pub(super) home: PathBuf,
}

/// A client path as the filesystem sees it: absolute paths as given, relative ones under
/// `cwd` (the process's own cwd in production, so this is what `open(2)` would do).
pub(super) fn resolve(cwd: &Path, path: &[u8]) -> Result<PathBuf> {
    if path.is_empty() {
        // OpenSSH's server treats "" as a missing file too; only realpath reads it as ".".
        return Err(io::Error::from_raw_os_error(libc::ENOENT).into());
    }
    Ok(cwd.join(sys::path_from_bytes(path)))
}

/// SFTP `REALPATH`: the canonical absolute path. Like OpenSSH's (BSD `realpath(3)`), the
/// last component need not exist, so a client can name a file it is about to create.
pub(super) fn realpath(cwd: &Path, path: &[u8]) -> Result<PathBuf> {
    let path = if path.is_empty() {
        cwd.to_path_buf()
    } else {
        resolve(cwd, path)?
    };
    match std::fs::canonicalize(&path) {
        Ok(real) => Ok(real),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let Some(Component::Normal(last)) = path.components().next_back() else {
                return Err(err.into());
            };
            let parent = path.parent().ok_or(SftpError::from(err))?;
            Ok(std::fs::canonicalize(parent)?.join(last))
        }
        Err(err) => Err(err.into()),
    }
}

/// `expand-path@openssh.com`: `~` and `~/x` are under `home`, `~name/x` under that
/// user's home; then as [`realpath`].
pub(super) fn expand(roots: &Roots, accounts: &mut Accounts, path: &[u8]) -> Result<PathBuf> {
    let Some(rest) = path.strip_prefix(b"~") else {
        return realpath(&roots.cwd, path);
    };
    let (user, tail) = match rest.iter().position(|&b| b == b'/') {
        Some(slash) => (&rest[..slash], &rest[slash + 1..]),
        None => (rest, &b""[..]),
    };
    let base = if user.is_empty() {
        roots.home.clone()
    } else {
        accounts
            .home_of(user)
            .ok_or_else(|| SftpError::Io(io::Error::new(io::ErrorKind::NotFound, "no such user")))?
    };
    let full = base.join(sys::path_from_bytes(tail));
    realpath(&roots.cwd, full.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_cwd() -> Result<()> {
        let cwd = Path::new("/workspace");
        assert_eq!(resolve(cwd, b"a/b")?, Path::new("/workspace/a/b"));
        assert_eq!(resolve(cwd, b"/etc")?, Path::new("/etc"));
        assert!(resolve(cwd, b"").is_err());
        Ok(())
    }

    #[test]
    fn realpath_allows_a_missing_last_component() -> Result<()> {
        let root = std::env::temp_dir().canonicalize()?;
        assert_eq!(realpath(&root, b"")?, root);
        assert_eq!(
            realpath(&root, b"./no-such-file-warren")?,
            root.join("no-such-file-warren")
        );
        assert!(realpath(&root, b"no-such-dir-warren/x").is_err());
        Ok(())
    }

    #[test]
    fn tilde_is_home_not_cwd() -> Result<()> {
        let roots = Roots {
            cwd: PathBuf::from("/"),
            home: std::env::temp_dir().canonicalize()?,
        };
        let mut accounts = Accounts::default();
        assert_eq!(expand(&roots, &mut accounts, b"~")?, roots.home);
        assert_eq!(expand(&roots, &mut accounts, b"~/x")?, roots.home.join("x"));
        assert_eq!(expand(&roots, &mut accounts, b"~root")?, Path::new("/root"));
        assert_eq!(expand(&roots, &mut accounts, b"etc")?, Path::new("/etc"));
        assert!(expand(&roots, &mut accounts, b"~no-such-user-warren/x").is_err());
        Ok(())
    }
}
