//! The gateway's layers, checked: every `crate::<module>` reference in
//! `gateway/src/**/*.rs` between two top-level modules must be an edge of
//! [`ALLOWED`], and the top-level modules' references must form no cycle. One
//! core (`lifecycle`), thin doors (`api`, `ssh` with its console, `tunnel` as the
//! runners' side) that never import each other, and shared pieces below them.
//!
//! docs/architecture.md shows the same table; change both together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module of gateway/src may import of the others.
const ALLOWED: &[(&str, &[&str])] = &[
    // Pure helpers: no other module of the gateway.
    ("escape", &[]),
    ("github", &[]),
    // Bounds on connections before and around login, for every door.
    ("guard", &[]),
    ("recordings", &["escape"]),
    // The runners' endpoint: their tunnels, and the lifecycle's requests on them.
    ("tunnel", &["guard"]),
    // A gateway tier: shared keys and membership, the set told to runners.
    ("tier", &["tunnel"]),
    // The core: who may do what, what a sandbox may become.
    ("lifecycle", &["tunnel", "recordings", "github", "escape"]),
    // The API's JSON answers, built from the lifecycle's: for the API and the
    // console's --json.
    ("views", &["lifecycle"]),
    // The doors users knock on.
    (
        "api",
        &["lifecycle", "views", "guard", "recordings", "escape"],
    ),
    (
        "ssh",
        &["lifecycle", "views", "guard", "recordings", "escape"],
    ),
    // Glue: the front door's agents reached through the runners' tunnels.
    ("dial", &["ssh", "tunnel"]),
    // Everything bound together.
    (
        "server",
        &[
            "api",
            "dial",
            "guard",
            "lifecycle",
            "recordings",
            "ssh",
            "tier",
            "tunnel",
            "views",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of gateway/src belongs to (`None`: the crate root
/// and the binary).
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of `text` without its comments (line comments, doc comments and
/// block comments); string literals are kept as they are, which is good enough
/// for a source tree that writes no `crate::` paths in strings.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |n| &after[n..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |n| &after[n + 2..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The top-level modules `code` names through `crate::`, grouped imports
/// (`crate::{a, b::c}`) included.
fn referenced(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        // `warren_crate::` and the like are not this crate.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        item_start = true;
                        continue;
                    }
                    c if c.is_whitespace() => continue,
                    _ if item_start && depth == 1 => {
                        found.insert(ident(&group[i..]));
                    }
                    _ => {}
                }
                item_start = false;
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|name| modules.contains(name));
    found
}

/// Every edge between top-level modules, with a file that makes it.
fn edges() -> BTreeMap<(String, String), PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            panic!("cannot read {}", file.display());
        };
        for to in referenced(&code_only(&text), &modules) {
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| file.clone());
            }
        }
    }
    edges
}

#[test]
fn every_import_between_top_level_modules_is_allowed() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut forbidden = Vec::new();
    for ((from, to), file) in edges() {
        let ok = allowed
            .get(from.as_str())
            .is_some_and(|targets| targets.contains(&to.as_str()));
        if !ok {
            forbidden.push(format!("{from} -> {to} ({})", file.display()));
        }
    }
    assert!(
        forbidden.is_empty(),
        "imports outside the layers (gateway/tests/layers.rs ALLOWED):\n  {}",
        forbidden.join("\n  ")
    );
}

#[test]
fn every_top_level_module_is_in_the_table() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let listed: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let missing: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(f))
        .filter(|m| !listed.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "top-level modules missing from ALLOWED: {missing:?}"
    );
}

#[test]
fn the_modules_form_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges().into_keys() {
        graph.entry(from).or_default().insert(to);
    }
    // Depth-first, with the path so far: a module met again on it closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("a cycle among gateway modules: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_table_itself_has_no_cycle_and_doors_do_not_import_each_other() {
    let doors = ["api", "ssh", "tunnel"];
    for (from, targets) in ALLOWED {
        if doors.contains(from) {
            for to in *targets {
                assert!(!doors.contains(to), "door {from} may not import door {to}");
            }
        }
    }
    // Every allowed edge points at a module listed earlier: the table is layered.
    let mut seen = BTreeSet::new();
    for (from, targets) in ALLOWED {
        for to in *targets {
            assert!(seen.contains(to), "{from} -> {to}: {to} must come first");
        }
        seen.insert(*from);
    }
}

#[test]
fn the_scanner_reads_grouped_imports_and_skips_comments() {
    let modules: BTreeSet<String> = ["api", "ssh", "lifecycle"]
        .into_iter()
        .map(String::from)
        .collect();
    let code = code_only(
        "use crate::{api::views, lifecycle::{Access, shares}};\n\
         // use crate::ssh;\n\
         /// [`crate::ssh`]\n\
         let x = crate::unpoisoned(&m); let y = warren_crate::ssh::Z;",
    );
    let found = referenced(&code, &modules);
    let expected: BTreeSet<String> = ["api", "lifecycle"].into_iter().map(String::from).collect();
    assert_eq!(found, expected);
}
/// Source files stay readable: none over 700 lines.
#[test]
fn no_source_file_is_over_700_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > 700).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over 700 lines: {long:?}");
}
