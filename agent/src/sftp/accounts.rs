//! User and group names, and users' homes, read straight from `/etc/passwd` and
//! `/etc/group`: the agent is a static binary without NSS (as `crate::user` does too).
//! Each file is read at most once per session, on first need.

use std::collections::HashMap;
use std::path::PathBuf;

use super::sys;

#[derive(Default)]
pub(super) struct Accounts {
    users: Option<Vec<User>>,
    groups: Option<HashMap<u32, String>>,
}

struct User {
    name: String,
    uid: u32,
    home: PathBuf,
}

impl Accounts {
    pub(super) fn user(&mut self, uid: u32) -> Option<&str> {
        let users = self.users.get_or_insert_with(read_users);
        users
            .iter()
            .find(|user| user.uid == uid)
            .map(|user| user.name.as_str())
    }

    pub(super) fn group(&mut self, gid: u32) -> Option<&str> {
        self.groups
            .get_or_insert_with(read_groups)
            .get(&gid)
            .map(String::as_str)
    }

    /// The home directory of the user called `name` (for `~name` paths).
    pub(super) fn home_of(&mut self, name: &[u8]) -> Option<PathBuf> {
        let users = self.users.get_or_insert_with(read_users);
        users
            .iter()
            .find(|user| user.name.as_bytes() == name)
            .map(|user| user.home.clone())
    }
}

/// `name:password:uid:gid:gecos:home:shell` lines.
fn read_users() -> Vec<User> {
    lines("/etc/passwd")
        .filter_map(|fields| {
            Some(User {
                name: String::from_utf8_lossy(fields.first()?).into_owned(),
                uid: number(fields.get(2)?)?,
                home: sys::path_from_bytes(fields.get(5)?),
            })
        })
        .collect()
}

/// `name:password:gid:members` lines; the first name for a gid wins.
fn read_groups() -> HashMap<u32, String> {
    let mut groups = HashMap::new();
    for fields in lines("/etc/group") {
        if let (Some(name), Some(gid)) = (fields.first(), fields.get(2).and_then(|f| number(f))) {
            groups
                .entry(gid)
                .or_insert_with(|| String::from_utf8_lossy(name).into_owned());
        }
    }
    groups
}

/// The colon-separated fields of each non-comment line; a missing file is empty.
fn lines(path: &str) -> impl Iterator<Item = Vec<Vec<u8>>> {
    let text = std::fs::read(path).unwrap_or_default();
    let lines: Vec<Vec<Vec<u8>>> = text
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty() && !line.starts_with(b"#"))
        .map(|line| line.split(|&b| b == b':').map(<[u8]>::to_vec).collect())
        .collect();
    lines.into_iter()
}

fn number(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known() {
        let mut accounts = Accounts::default();
        assert_eq!(accounts.user(0), Some("root"));
        assert_eq!(accounts.home_of(b"root"), Some(PathBuf::from("/root")));
        assert!(accounts.group(0).is_some());
        assert_eq!(accounts.user(u32::MAX - 7), None);
    }
}
