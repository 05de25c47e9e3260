//! The workspace's shape: its crates depend on each other one way, dev-dependencies
//! included (a test of `runner` that needs `warren-tests` belongs in `tests/`, or
//! the crates form a cycle that `cargo` accepts but a reader cannot follow), and no
//! source file is over 700 lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use warren_tests::{Cmd, workspace_root};

/// Each workspace crate and the workspace crates it depends on (any kind).
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Cmd::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--no-deps",
        ])
        .current_dir(workspace_root())
        .run()
        .unwrap()
        .success()
        .unwrap();
    let metadata: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

/// A cycle in `graph` as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
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
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, dep, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

#[test]
fn workspace_crates_depend_one_way_dev_dependencies_included() {
    let graph = workspace_graph();
    assert!(graph.contains_key("warren-tests"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the crates form a cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle_through_a_dev_dependency() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("runner", vec!["protocol"]),
        ("tests", vec!["runner", "gateway"]),
        ("gateway", vec!["protocol", "tests"]),
        ("protocol", vec![]),
    ]
    .into_iter()
    .map(|(n, deps)| (n.to_owned(), deps.into_iter().map(str::to_owned).collect()))
    .collect();
    let cycle = find_cycle(&graph).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"gateway".to_owned()), "{cycle:?}");
    let mut one_way = graph;
    one_way.get_mut("gateway").unwrap().remove("tests");
    assert_eq!(find_cycle(&one_way), None);
}

/// Every first-party Rust source file (not the vendored crates) is short enough to
/// read in one sitting: a longer one is split by topic.
#[test]
fn no_source_file_is_over_700_lines() {
    const MOST: usize = 700;
    fn walk(dir: &std::path::Path, long: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "third_party" {
                    walk(&path, long);
                }
            } else if name.ends_with(".rs") {
                let lines = std::fs::read_to_string(&path).map_or(0, |t| t.lines().count());
                if lines > MOST {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
    }
    let root = workspace_root();
    let mut long = Vec::new();
    walk(&root, &mut long);
    assert!(long.is_empty(), "over {MOST} lines: {long:?}");
}
