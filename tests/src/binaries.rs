//! Finding (and building) the Warren binaries the tests drive.
//!
//! `cargo nextest run --workspace` builds test binaries but not other packages'
//! binaries, so the first test in a process runs `cargo build` for what it needs,
//! once, and reads the artifact's path from cargo's JSON messages. That honours
//! `CARGO_TARGET_DIR`, `--target` settings in config files and the like, because cargo
//! itself decides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Cmd;

/// Which cargo profile to build a binary with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// The default dev profile, as the tests themselves are built.
    Debug,
    Release,
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The path of a binary from this workspace, built in the debug profile.
///
/// `name` is both the package and the binary name (`"warren-agent"`). Builds at most
/// once per process. Panics with cargo's output if the build fails: a test cannot go
/// on without it.
pub fn bin_path(name: &str) -> PathBuf {
    match build_bin(name, name, Profile::Debug) {
        Ok(path) => path,
        Err(e) => panic!("cannot build {name}: {e:#}"),
    }
}

/// Build `bin` from `package` with `profile` (once per process) and return its path.
///
/// `WARREN_TEST_BIN_DIR`, when set, short-circuits the build: the binary is taken from
/// that directory as is (for CI that builds once, or for a binary built elsewhere).
pub fn build_bin(package: &str, bin: &str, profile: Profile) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WARREN_TEST_BIN_DIR") {
        let path = PathBuf::from(dir).join(bin);
        if !path.is_file() {
            bail!(
                "WARREN_TEST_BIN_DIR is set but {} is missing",
                path.display()
            );
        }
        return Ok(path);
    }
    type Built = HashMap<(String, String, Profile), PathBuf>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    // Holding the lock across the build serialises builds within a process, which
    // cargo would do anyway (it locks the target directory).
    let mut built = match built.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let key = (package.to_owned(), bin.to_owned(), profile);
    if let Some(path) = built.get(&key) {
        return Ok(path.clone());
    }
    let path = cargo_build(package, bin, profile)?;
    built.insert(key, path.clone());
    Ok(path)
}

fn cargo_build(package: &str, bin: &str, profile: Profile) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let mut cmd = Cmd::new(cargo)
        .current_dir(&root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", package, "--bin", bin])
        // A cold build of the agent with russh takes a while on two cores.
        .timeout(Duration::from_secs(1800));
    for name in cargo_set_vars() {
        cmd = cmd.env_remove(name);
    }
    if profile == Profile::Release {
        cmd = cmd.arg("--release");
    }
    let out = cmd.run()?;
    if !out.status.success() {
        bail!("cargo build failed:\n{}", out.stderr_str());
    }
    let stdout = out.stdout_str();
    stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter(|l| l.contains(&format!(r#""name":"{bin}""#)))
        .find_map(json_executable)
        .with_context(|| format!("cargo did not report an executable for {bin}"))
}

/// The variables cargo sets for the test (or build script) running us. A cargo run
/// from here must not inherit them: build scripts that watch one (ring watches
/// `CARGO_MANIFEST_DIR`) would see it changed and rebuild half the workspace, then
/// again for the next caller. `scripts/build-static-agent` and `scripts/up` drop
/// the same ones.
fn cargo_set_vars() -> Vec<std::ffi::OsString> {
    const SET: [&str; 5] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_TARGET_TMPDIR",
    ];
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| {
            let name = name.to_string_lossy();
            SET.contains(&name.as_ref()) || name.starts_with("CARGO_PKG_")
        })
        .collect()
}

/// The `"executable":"…"` field of one cargo JSON message, unescaped.
fn json_executable(line: &str) -> Option<PathBuf> {
    let start = line.find(r#""executable":""#)? + r#""executable":""#.len();
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(PathBuf::from(out)),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_executable_from_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"warren-agent"},"executable":"/w/target/debug/warren-agent","fresh":true}"#;
        assert_eq!(
            json_executable(line),
            Some(PathBuf::from("/w/target/debug/warren-agent"))
        );
        assert_eq!(json_executable(r#"{"executable":null}"#), None);
    }
}
