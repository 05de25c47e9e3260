//! What a seed must change: the local tree against the remote listing. Pure (no
//! I/O), so it is tested on its own.

use std::collections::BTreeSet;

use crate::remote::Listing;
use crate::tree::{Kind, Tree};

/// How a file is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Send {
    /// The remote copy may be equal (same size, other mtime): hash to decide.
    MaybeEqual,
    /// A resumable or patchable file: compare chunks, send those that differ.
    Chunked { resume_part: bool },
    /// Send it all.
    Whole,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Remote paths to remove before anything is written (deepest first): extras
    /// under `--delete`, and whatever is in the way of a different kind.
    pub remove: Vec<(String, Kind)>,
    /// Directories to make, parents first.
    pub mkdirs: Vec<(String, u32)>,
    pub files: Vec<(String, Send)>,
    pub links: Vec<(String, String)>,
    /// Files equal but for mode or mtime.
    pub touch: Vec<String>,
    /// Temp files of an earlier run no file of this run will use.
    pub stale_parts: Vec<String>,
    pub skipped: u64,
}

/// Files at least this big are compared and resumed in chunks.
pub const CHUNKED_FROM: u64 = 4 * crate::chunks::CHUNK;

impl Plan {
    /// Whether carrying it out writes nothing in the sandbox.
    pub fn changes_nothing(&self) -> bool {
        self.remove.is_empty()
            && self.mkdirs.is_empty()
            && self.files.is_empty()
            && self.links.is_empty()
            && self.touch.is_empty()
            && self.stale_parts.is_empty()
    }
}

pub fn plan(local: &Tree, remote: &Listing, delete: bool) -> Plan {
    let mut plan = Plan::default();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let remove_subtree = |root: &str, plan: &mut Plan, removed: &mut BTreeSet<String>| {
        let prefix = format!("{root}/");
        for (path, kind) in remote.tree.range(root.to_owned()..) {
            if path != root && !path.starts_with(&prefix) {
                break;
            }
            if removed.insert(path.clone()) {
                plan.remove.push((path.clone(), kind.clone()));
            }
        }
    };
    for (path, kind) in local {
        let there = remote.tree.get(path);
        let conflict =
            there.is_some_and(|t| std::mem::discriminant(t) != std::mem::discriminant(kind));
        if conflict {
            remove_subtree(path, &mut plan, &mut removed);
        }
        let there = if conflict { None } else { there };
        match kind {
            Kind::Dir { mode, .. } => {
                if there.is_none() {
                    plan.mkdirs.push((path.clone(), *mode));
                }
            }
            Kind::Symlink { target } => match there {
                Some(Kind::Symlink { target: t }) if t == target => plan.skipped += 1,
                Some(_) => {
                    if removed.insert(path.clone()) {
                        plan.remove.push((
                            path.clone(),
                            Kind::Symlink {
                                target: t_of(there),
                            },
                        ));
                    }
                    plan.links.push((path.clone(), target.clone()));
                }
                None => plan.links.push((path.clone(), target.clone())),
            },
            Kind::File { size, mtime, mode } => {
                let part = remote.parts.get(path).copied();
                match there {
                    Some(Kind::File {
                        size: s,
                        mtime: m,
                        mode: md,
                    }) if s == size && m == mtime && part.is_none() => {
                        if md == mode {
                            plan.skipped += 1;
                        } else {
                            plan.touch.push(path.clone());
                        }
                    }
                    _ if part.is_some() && *size >= CHUNKED_FROM => plan
                        .files
                        .push((path.clone(), Send::Chunked { resume_part: true })),
                    Some(Kind::File { size: s, .. }) if s == size => {
                        plan.files.push((path.clone(), Send::MaybeEqual))
                    }
                    Some(Kind::File { .. }) if *size >= CHUNKED_FROM => plan
                        .files
                        .push((path.clone(), Send::Chunked { resume_part: false })),
                    _ => plan.files.push((path.clone(), Send::Whole)),
                }
            }
        }
    }
    if delete {
        for (path, kind) in &remote.tree {
            if !local.contains_key(path) && removed.insert(path.clone()) {
                plan.remove.push((path.clone(), kind.clone()));
            }
        }
    }
    let sending: BTreeSet<&str> = plan.files.iter().map(|(p, _)| p.as_str()).collect();
    for target in remote.parts.keys() {
        if !sending.contains(target.as_str()) {
            plan.stale_parts.push(crate::tree::part_name(target));
        }
    }
    // Deepest first, so a directory is empty when its turn comes.
    plan.remove.sort_by(|a, b| b.0.cmp(&a.0));
    plan
}

fn t_of(kind: Option<&Kind>) -> String {
    match kind {
        Some(Kind::Symlink { target }) => target.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64) -> Kind {
        Kind::File {
            size,
            mtime,
            mode: 0o644,
        }
    }

    #[test]
    fn equal_files_are_skipped_and_changed_ones_sent() {
        let local: Tree = [
            ("a".to_owned(), file(1, 10)),
            ("b".to_owned(), file(2, 10)),
            ("c".to_owned(), file(3, 10)),
        ]
        .into();
        let remote = Listing {
            tree: [
                ("a".to_owned(), file(1, 10)),
                ("b".to_owned(), file(2, 11)),
                ("x".to_owned(), file(2, 11)),
            ]
            .into(),
            parts: Default::default(),
        };
        let p = plan(&local, &remote, true);
        assert_eq!(p.skipped, 1);
        assert_eq!(
            p.files,
            vec![("b".into(), Send::MaybeEqual), ("c".into(), Send::Whole)]
        );
        assert_eq!(p.remove.len(), 1);
        assert_eq!(p.remove[0].0, "x");
        assert!(!p.changes_nothing());
        // The same tree again, and a stray part of an earlier run: only the part
        // is work.
        let mut same = Listing {
            tree: local.clone(),
            parts: Default::default(),
        };
        assert!(plan(&local, &same, true).changes_nothing());
        same.parts.insert("c".into(), 3);
        assert!(!plan(&local, &same, true).changes_nothing());
    }

    #[test]
    fn a_directory_in_the_way_of_a_file_goes_with_its_contents() {
        let local: Tree = [("d".to_owned(), file(1, 1))].into();
        let remote = Listing {
            tree: [
                (
                    "d".to_owned(),
                    Kind::Dir {
                        mode: 0o755,
                        mtime: 0,
                    },
                ),
                ("d/e".to_owned(), file(1, 1)),
                ("d2".to_owned(), file(1, 1)),
            ]
            .into(),
            parts: Default::default(),
        };
        let p = plan(&local, &remote, false);
        let removed: Vec<&str> = p.remove.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(removed, vec!["d/e", "d"]);
    }
}
