//! A devcontainer.json's `build` (Docker backend, only where the operator allows
//! builds): where its Dockerfile and context are in the repository (never above
//! it), the context fetched onto the runner host as a bounded tar archive straight
//! from git's object store (nothing checked out), the Dockerfile checked
//! ([`devcontainer::dockerfile`]: only allowed local images, nothing the engine
//! would fetch), then built with no network ([`crate::backend::docker::build`]).
//! A build that fails refuses the create, with the failing step's output, and
//! leaves no sandbox behind.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use warren_keys::SandboxId;

use crate::backend::docker::DockerBackend;
use crate::backend::docker::build::Build;
use crate::devcontainer::{self, BuildSpec, Context};
use crate::protocol::{RepoSpec, Secret};
use crate::{Error, Result, git};

/// The largest build context (its tar archive).
pub const MAX_CONTEXT: usize = 32 << 20;
/// The largest file in it.
const MAX_BLOB: usize = 16 << 20;
/// At most this many build arguments, each value at most this long.
const MAX_ARGS: usize = 32;
const MAX_ARG_VALUE: usize = 4096;
/// The longest a build may take (a devcontainer create has 150 s in all).
const MAX_BUILD: Duration = Duration::from_secs(100);

/// Builds the image `build` (from the file at `path`) describes and returns its
/// name, noting what it did. A refusal or a failed build is an error (the create
/// is refused).
#[allow(clippy::too_many_arguments)]
pub async fn build(
    docker: &DockerBackend,
    id: &SandboxId,
    repo: &RepoSpec,
    path: &str,
    spec: &BuildSpec,
    local_env: &BTreeMap<String, String>,
    deadline: Instant,
    notes: &mut crate::devsetup::Notes,
) -> Result<String> {
    let folder = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    let dockerfile = spec.dockerfile.as_deref().unwrap_or("Dockerfile");
    let context = inside(folder, spec.context.as_deref().unwrap_or("."))
        .ok_or_else(|| refused("build.context must stay inside the repository"))?;
    let dockerfile_path = inside(folder, dockerfile)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| refused("build.dockerfile must be a file inside the repository"))?;
    let in_context = if context.is_empty() {
        Some(dockerfile_path.as_str())
    } else {
        dockerfile_path
            .strip_prefix(&format!("{context}/"))
            .filter(|p| !p.is_empty())
    }
    .ok_or_else(|| refused("build.dockerfile must be inside build.context"))?
    .to_owned();
    let args = build_args(spec, local_env)?;
    let target = spec.target.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = target
        && !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(refused("build.target is not a stage name"));
    }

    let began = Instant::now();
    let place = docker.devcontainer_place(id);
    let read = git::read_tree_at(
        &place,
        &repo.url,
        repo.base.as_deref(),
        &dockerfile_path,
        &context,
        repo.token.as_ref().map(Secret::expose),
        MAX_BLOB,
        MAX_CONTEXT,
    );
    let left = deadline.saturating_duration_since(Instant::now());
    let git::TreeRead {
        file: text,
        tar,
        id: tree,
    } = tokio::time::timeout(left.min(Duration::from_secs(60)), read)
        .await
        .map_err(|_| refused("the build context could not be fetched in time"))??;
    let bases = devcontainer::dockerfile::check(&text, |image| docker.build_base_allowed(image))
        .map_err(|e| refused(&format!("{dockerfile_path}: {e}")))?;
    for base in &bases {
        if !docker.has_image(base).await {
            return Err(refused(&format!(
                "{dockerfile_path}: {base} is allowed but not on this runner (builds never pull)"
            )));
        }
    }
    let hash = inputs_hash(&in_context, &tree, &args, target);
    let context_kib = tar.len() / 1024;
    let limit = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(Duration::from_secs(30))
        .min(MAX_BUILD);
    if notes.is_live() {
        notes.push(format!(
            "devcontainer: building {dockerfile_path} (context {context_kib} KiB, no network, \
             at most {} s)",
            limit.as_secs()
        ));
    }
    let mut output = crate::devsetup::progress::Output::new("build", notes);
    let mut feed = |bytes: &[u8]| output.feed(bytes);
    let built = docker
        .build_image(
            Build {
                hash: &hash[..32],
                context: tar,
                dockerfile: &in_context,
                args,
                target,
            },
            limit,
            &mut feed,
        )
        .await;
    output.finish();
    match built {
        Ok((image, true)) => {
            notes.push(format!(
                "devcontainer: {image} was built earlier from the same {dockerfile_path} and \
                 context; reused"
            ));
            Ok(image)
        }
        Ok((image, false)) => {
            notes.push(format!(
                "devcontainer: built {image} from {dockerfile_path} (context {context_kib} KiB, \
                 {} s, no network)",
                began.elapsed().as_secs()
            ));
            Ok(image)
        }
        Err(failed) => Err(refused(&format!(
            "building {dockerfile_path} failed: {}{}",
            crate::devsetup::harmless(failed.message.trim()),
            crate::devsetup::tail(&failed.output)
        ))),
    }
}

fn refused(message: &str) -> Error {
    Error::refused("build_failed", message.to_owned())
}

/// `relative` joined to the repository folder `folder`, as a clean path from the
/// repository's top ("" for the top); `None` if it leaves the repository or is
/// absolute.
fn inside(folder: &str, relative: &str) -> Option<String> {
    if relative.starts_with('/') || relative.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in folder.split('/').chain(relative.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// `build.args` with `${localEnv:…}` replaced, bounded.
fn build_args(
    spec: &BuildSpec,
    local_env: &BTreeMap<String, String>,
) -> Result<HashMap<String, String>> {
    if spec.args.len() > MAX_ARGS {
        return Err(refused(&format!("at most {MAX_ARGS} build.args")));
    }
    let none = BTreeMap::new();
    let cx = Context {
        local_env,
        image_env: &none,
        workspace: "/workspace",
        repo_name: "",
    };
    let mut args = HashMap::new();
    for (name, value) in &spec.args {
        let value = devcontainer::substitute(value, &cx, &none);
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok || value.len() > MAX_ARG_VALUE || value.contains('\0') {
            return Err(refused(&format!(
                "build.args {:?}: names are [A-Za-z0-9_], values at most {MAX_ARG_VALUE} bytes",
                devcontainer::plain(name, 40)
            )));
        }
        args.insert(name.clone(), value);
    }
    Ok(args)
}

/// The hex SHA-256 of everything a build reads: the Dockerfile's path, the
/// context's git tree id (its content, the Dockerfile's included), the arguments
/// and the target.
fn inputs_hash(
    dockerfile: &str,
    tree: &str,
    args: &HashMap<String, String>,
    target: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(dockerfile.as_bytes());
    field(tree.as_bytes());
    let sorted: BTreeMap<&String, &String> = args.iter().collect();
    for (name, value) in sorted {
        field(name.as_bytes());
        field(value.as_bytes());
    }
    field(target.unwrap_or("").as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_repository() {
        assert_eq!(
            inside(".devcontainer", "Dockerfile").unwrap(),
            ".devcontainer/Dockerfile"
        );
        assert_eq!(inside(".devcontainer", "..").unwrap(), "");
        assert_eq!(
            inside(".devcontainer", "../docker/./x").unwrap(),
            "docker/x"
        );
        assert_eq!(inside("", ".").unwrap(), "");
        assert!(inside(".devcontainer", "../..").is_none());
        assert!(inside("", "../x").is_none());
        assert!(inside("", "/etc/passwd").is_none());
    }

    #[test]
    fn hashes_change_with_any_input() {
        let args = HashMap::from([("A".to_owned(), "1".to_owned())]);
        let base = inputs_hash("Dockerfile", "tree", &args, None);
        assert_eq!(base.len(), 64);
        assert_ne!(base, inputs_hash("Dockerfile", "tree2", &args, None));
        assert_ne!(
            base,
            inputs_hash("Dockerfile", "tree", &HashMap::new(), None)
        );
        assert_ne!(base, inputs_hash("Dockerfile", "tree", &args, Some("dev")));
        assert_eq!(base, inputs_hash("Dockerfile", "tree", &args, None));
    }
}
