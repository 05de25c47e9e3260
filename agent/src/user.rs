//! The sandbox user, read straight from the image's `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static binary: static glibc cannot use NSS, so `getpwnam` finds
//! nobody inside a foreign image. We parse the files ourselves instead.

use std::path::{Path, PathBuf};

/// The account sessions run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group included.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user {0:?} is not in {1}")]
    NotFound(String, PathBuf),
}

/// One parsed line of a passwd file.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
    shell: &'a str,
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let mut fields = line.split(':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    let _gecos = fields.next()?;
    let home = fields.next()?;
    let shell = fields.next().unwrap_or("");
    (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry {
        name,
        uid,
        gid,
        home,
        shell,
    })
}

/// Group ids whose member list names `user`, read from a group file.
fn supplementary_groups(group_file: &str, user: &str) -> Vec<u32> {
    group_file
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let _name = fields.next()?;
            let _password = fields.next()?;
            let gid: u32 = fields.next()?.parse().ok()?;
            let members = fields.next()?;
            members.split(',').any(|m| m.trim() == user).then_some(gid)
        })
        .collect()
}

fn read(path: &Path) -> Result<String, UserError> {
    std::fs::read_to_string(path).map_err(|source| UserError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Where to look users up.
#[derive(Debug, Clone)]
pub struct UserDb {
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Default for UserDb {
    fn default() -> Self {
        UserDb {
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
        }
    }
}

impl UserDb {
    /// Looks a user up by name.
    pub fn by_name(&self, name: &str) -> Result<SandboxUser, UserError> {
        self.find(|e| e.name == name)?
            .ok_or_else(|| UserError::NotFound(name.to_owned(), self.passwd.clone()))
    }

    /// Looks a user up by uid; `None` when the uid has no entry (common in containers
    /// started with an arbitrary `--user`).
    pub fn by_uid(&self, uid: u32) -> Result<Option<SandboxUser>, UserError> {
        self.find(|e| e.uid == uid)
    }

    fn find(
        &self,
        pred: impl Fn(&PasswdEntry<'_>) -> bool,
    ) -> Result<Option<SandboxUser>, UserError> {
        let passwd = read(&self.passwd)?;
        let Some(entry) = passwd.lines().filter_map(parse_passwd_line).find(pred) else {
            return Ok(None);
        };
        // A missing group file only costs the supplementary groups.
        let groups_text = read(&self.group).unwrap_or_default();
        let mut groups = vec![entry.gid];
        for gid in supplementary_groups(&groups_text, entry.name) {
            if !groups.contains(&gid) {
                groups.push(gid);
            }
        }
        Ok(Some(SandboxUser {
            name: entry.name.to_owned(),
            uid: entry.uid,
            gid: entry.gid,
            groups,
            home: non_empty_or(entry.home, "/").into(),
            shell: usable_shell(entry.shell),
        }))
    }
}

fn non_empty_or<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// The login shell, or `/bin/sh` when the entry names none or one the image lacks
/// (an image's passwd may name `/bin/bash` where only busybox exists).
fn usable_shell(shell: &str) -> PathBuf {
    let shell = Path::new(non_empty_or(shell, "/bin/sh"));
    if shell.exists() {
        shell.to_owned()
    } else {
        PathBuf::from("/bin/sh")
    }
}

/// Name, uid and gid of the user `--user auto` creates when an image has none.
const AUTO_USER: (&str, u32, u32) = ("sandbox", 1000, 1000);

impl UserDb {
    /// The unprivileged user for `--user auto`: one named `sandbox`, else the first
    /// ordinary account (uid 1000–59999), else a `sandbox` user (uid 1000) added to
    /// the image's passwd and group files — or, when those are read-only, one that
    /// exists only in the agent, with the workspace as its home.
    pub fn auto_user(&self, home_if_created: &Path) -> Result<SandboxUser, UserError> {
        // Never an account of uid or gid 0, whatever it is called.
        if let Some(user) = self.find(|e| e.name == AUTO_USER.0 && e.uid != 0 && e.gid != 0)? {
            return Ok(user);
        }
        if let Some(user) = self.find(|e| (1000..60000).contains(&e.uid) && e.gid != 0)? {
            return Ok(user);
        }
        let (name, uid, gid) = AUTO_USER;
        let shell = usable_shell("/bin/bash");
        let line = format!(
            "{name}:x:{uid}:{gid}::{}:{}\n",
            home_if_created.display(),
            shell.display()
        );
        let added = append_line(&self.passwd, &line).is_ok();
        if added {
            let _ = append_line(&self.group, &format!("{name}:x:{gid}:\n"));
        }
        tracing::info!(
            added_to_passwd = added,
            "created the sandbox user {name} ({uid})"
        );
        Ok(SandboxUser {
            name: name.into(),
            uid,
            gid,
            groups: vec![gid],
            home: home_if_created.to_owned(),
            shell,
        })
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let existing = std::fs::read(path)?;
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        file.write_all(b"\n")?;
    }
    file.write_all(line.as_bytes())
}

/// The user the agent itself runs as, for when no sandbox user is configured.
pub fn current_user(db: &UserDb) -> Result<SandboxUser, UserError> {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if let Some(user) = db.by_uid(uid)? {
        return Ok(user);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    Ok(SandboxUser {
        name: std::env::var("USER").unwrap_or_else(|_| format!("uid{uid}")),
        uid,
        gid,
        groups: vec![gid],
        home,
        shell: usable_shell(""),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_groups_from_files() {
        let dir = std::env::temp_dir().join(format!("warren-user-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        let group = dir.join("group");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\ndev:x:1000:1000::/home/dev:/no/such/shell\n",
        )
        .unwrap();
        std::fs::write(
            &group,
            "dev:x:1000:\nwheel:x:10:root,dev\ndocker:x:998:other\n",
        )
        .unwrap();
        let db = UserDb {
            passwd,
            group: group.clone(),
        };
        let dev = db.by_name("dev").unwrap();
        assert_eq!((dev.uid, dev.gid), (1000, 1000));
        assert_eq!(dev.groups, vec![1000, 10]);
        assert_eq!(dev.home, PathBuf::from("/home/dev"));
        assert_eq!(dev.shell, PathBuf::from("/bin/sh"));
        assert!(matches!(db.by_name("nobody"), Err(UserError::NotFound(..))));
        assert_eq!(db.by_uid(0).unwrap().unwrap().name, "root");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
