//! The local tree: what a seed sends, found with the `ignore` crate (`.gitignore`,
//! `.ignore`, `--exclude`), links kept as links and refused when they point out of
//! the tree. Not for the remote side (`remote.rs`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::error::SyncError;

/// What one path is, with what sync keeps of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, mtime: i64, mode: u32 },
    Dir { mode: u32, mtime: i64 },
    Symlink { target: String },
}

/// Relative paths (`/`-separated, no leading `/`) to what they are, sorted so a
/// directory comes before what is in it.
pub type Tree = BTreeMap<String, Kind>;

/// The suffix of the hidden temp file a file is written to before its rename.
pub const PART_SUFFIX: &str = ".warren-part";

/// `.name.warren-part` beside `name`: where `rel` is written before it is renamed.
pub fn part_name(rel: &str) -> String {
    match rel.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}{PART_SUFFIX}"),
        None => format!(".{rel}{PART_SUFFIX}"),
    }
}

/// Whether `rel` is one of our temp files, and then the final name it is for.
pub fn part_target(rel: &str) -> Option<String> {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, rel),
    };
    let stem = name.strip_prefix('.')?.strip_suffix(PART_SUFFIX)?;
    if stem.is_empty() {
        return None;
    }
    Some(match dir {
        Some(dir) => format!("{dir}/{stem}"),
        None => stem.to_owned(),
    })
}

/// Whether a single name is one of our temp names (`.NAME.warren-part`, whatever
/// NAME is): such names are never taken from a sandbox, of any type.
pub fn is_part_name(name: &str) -> bool {
    part_target(name).is_some()
}

/// Whether any component of `rel` is a temp name.
pub fn has_part_component(rel: &str) -> bool {
    rel.split('/').any(is_part_name)
}

/// Longest name a component may have (NAME_MAX on Linux and macOS).
pub const NAME_MAX: usize = 255;

/// Whether `name` (one entry of a directory, as a sandbox lists it) can be one
/// component of a local path: not empty, not `.` or `..`, no `/` or NUL, at most
/// [`NAME_MAX`] bytes.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains(['/', '\0'])
}

/// Whether the mirror may make a link at `rel` (a checked relative path) whose
/// text is `target`. The rule: relative; its `..` components all come first, and
/// there are no more of them than directories above the link; the rest are plain
/// names (and `.`). A link that keeps it resolves inside the tree whatever else
/// the tree holds or comes to hold: its `..`s climb real directories (the mirror
/// never writes through a link, so the link's own directory is reached through
/// none), and below that it only descends, through entries that each stay inside
/// by the same rule. Judging a target by its text alone is not enough: `d/u -> ..`
/// and `x -> d/u/../.bashrc` both look inside, and `x` resolves to the parent.
pub fn link_stays_beneath(rel: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let depth = rel.split('/').count().saturating_sub(1);
    let (mut ups, mut descended) = (0usize, false);
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if descended => return false,
            ".." => {
                ups += 1;
                if ups > depth {
                    return false;
                }
            }
            _ => descended = true,
        }
    }
    true
}

/// What a scan found besides the tree: links it would not follow.
#[derive(Debug, Default)]
pub struct Scan {
    pub tree: Tree,
    pub refused_links: Vec<String>,
}

/// Walks `root`, honouring ignore files and `excludes` (gitignore-style globs).
/// `on_found` is called with the running count, for the discovering stage.
pub fn scan(
    root: &Path,
    excludes: &[String],
    mut on_found: impl FnMut(u64, u64),
) -> Result<Scan, SyncError> {
    let meta = std::fs::metadata(root).map_err(|e| SyncError::Local(root.to_owned(), e))?;
    if !meta.is_dir() {
        return Err(SyncError::NotADirectory(root.display().to_string()));
    }
    let mut overrides = ignore::overrides::OverrideBuilder::new(root);
    for pattern in excludes {
        // In an override a plain glob whitelists; `!` makes it an ignore rule.
        overrides.add(&format!("!{pattern}"))?;
    }
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .parents(false)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .overrides(overrides.build()?)
        .build();
    let mut scan = Scan::default();
    let (mut files, mut bytes) = (0u64, 0u64);
    for item in walker {
        let item = item?;
        let path = item.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let rel = relative
            .to_str()
            .ok_or_else(|| SyncError::NotUtf8(path.to_owned()))?
            .to_owned();
        if part_target(&rel).is_some() {
            continue;
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| SyncError::Local(path.into(), e))?;
        let kind = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| SyncError::Local(path.into(), e))?;
            if !stays_inside(relative, &target) {
                scan.refused_links.push(rel);
                continue;
            }
            let Some(target) = target.to_str() else {
                return Err(SyncError::NotUtf8(path.to_owned()));
            };
            Kind::Symlink {
                target: target.to_owned(),
            }
        } else if meta.is_dir() {
            Kind::Dir {
                mode: meta.mode() & 0o7777,
                mtime: meta.mtime(),
            }
        } else if meta.is_file() {
            files += 1;
            bytes += meta.len();
            on_found(files, bytes);
            Kind::File {
                size: meta.len(),
                mtime: meta.mtime(),
                mode: meta.mode() & 0o7777,
            }
        } else {
            // Sockets, fifos and devices have no place in a workspace copy.
            continue;
        };
        scan.tree.insert(rel, kind);
    }
    Ok(scan)
}

/// Whether a link at `link` (relative to the root) pointing at `target` resolves
/// inside the root, judged by its text alone (no link is followed to decide).
pub fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for component in target.components() {
        match component {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The absolute local path of `rel` under `root`.
pub fn local_path(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_and_outside() {
        assert!(stays_inside(Path::new("a/l"), Path::new("b")));
        assert!(stays_inside(Path::new("a/l"), Path::new("../x")));
        assert!(!stays_inside(Path::new("a/l"), Path::new("../../x")));
        assert!(!stays_inside(Path::new("l"), Path::new("/etc/passwd")));
        assert!(stays_inside(Path::new("a/b/l"), Path::new("./../../c")));
    }

    #[test]
    fn mirrored_links_climb_first_and_never_past_the_root() {
        // The attack: each looks inside by its text.
        assert!(link_stays_beneath("d/u", ".."));
        assert!(!link_stays_beneath("x", "d/u/../.bashrc"));
        assert!(!link_stays_beneath(".x.warren-part", "d/u/../.bashrc"));
        // Ordinary links in a workspace.
        assert!(link_stays_beneath(
            "node_modules/.bin/tsc",
            "../typescript/bin/tsc"
        ));
        assert!(link_stays_beneath("a/b/l", "../../c"));
        assert!(link_stays_beneath("l", "./a.txt"));
        assert!(link_stays_beneath("l", "sub/"));
        // Out, or not judged by position: refused.
        assert!(!link_stays_beneath("l", "../x"));
        assert!(!link_stays_beneath("a/l", "../../x"));
        assert!(!link_stays_beneath("l", "/etc/passwd"));
        assert!(!link_stays_beneath("a/l", "b/../c"));
        assert!(!link_stays_beneath("a/l", "./b/.."));
        assert!(!link_stays_beneath("l", ""));
    }

    #[test]
    fn names_from_a_listing() {
        for good in [
            "a",
            ".hidden",
            "a b",
            "\u{1b}]52;c;x\u{7}",
            &"n".repeat(255),
        ] {
            assert!(plain_name(good), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", &"n".repeat(256)] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        assert!(has_part_component("d/.x.warren-part/y"));
        assert!(has_part_component(".x.warren-part"));
        assert!(!has_part_component("d/x.warren-part"));
    }

    #[test]
    fn part_names_round_trip() {
        assert_eq!(part_name("a/b.txt"), "a/.b.txt.warren-part");
        assert_eq!(
            part_target("a/.b.txt.warren-part").as_deref(),
            Some("a/b.txt")
        );
        assert_eq!(part_target(".x.warren-part").as_deref(), Some("x"));
        assert_eq!(part_target("x.warren-part"), None);
    }
}
