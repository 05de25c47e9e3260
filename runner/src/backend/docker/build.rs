//! Images built from a repository's Dockerfile (a devcontainer.json's `build`):
//! tenant code run on the runner host, so only where the operator allows builds
//! (`--allow-builds`), one at a time, with no network at all (`RUN` reaches
//! neither the internet nor the runner host), bounded memory and CPU, a time
//! limit, and only from images this runner allows and already has (the engine
//! never pulls). The Dockerfile itself is checked before
//! ([`crate::devcontainer::dockerfile`]). Built images are tagged by the hash of
//! what went into them, so the same inputs are built once; only the runner's own
//! devcontainer path may run them (see [`BUILD_PREFIX`]).

use std::sync::OnceLock;

use bollard::query_parameters::BuildImageOptions;
use tokio::sync::Semaphore;

use super::*;

/// Built images are named `warren-build-<hash>`; a create naming one itself is
/// refused (it may hold another tenant's build arguments).
pub const BUILD_PREFIX: &str = "warren-build-";
/// The label every built image carries (valued with the runner).
pub const LABEL_BUILD: &str = "org.warren.build";
/// Memory of a build's containers, in bytes (the engine's field is an i32).
const BUILD_MEMORY: i32 = 1 << 30;
/// CPU of a build's containers: one CPU's worth of each 100 ms.
const BUILD_CPU_PERIOD: i32 = 100_000;
const BUILD_CPU_QUOTA: i32 = 100_000;
/// The build output kept (its tail).
const KEPT_OUTPUT: usize = 16 * 1024;

/// One build at a time on a runner.
fn one_at_a_time() -> &'static Semaphore {
    static BUILDS: OnceLock<Semaphore> = OnceLock::new();
    BUILDS.get_or_init(|| Semaphore::new(1))
}

/// What to build.
pub struct Build<'a> {
    /// The hash of everything below, which names the image.
    pub hash: &'a str,
    /// The build context, as a tar archive.
    pub context: Vec<u8>,
    /// The Dockerfile's path in the context.
    pub dockerfile: &'a str,
    pub args: HashMap<String, String>,
    pub target: Option<&'a str>,
}

/// How a build ended that made no image.
#[derive(Debug)]
pub struct BuildFailed {
    pub message: String,
    /// The tail of its output.
    pub output: String,
}

impl DockerBackend {
    /// Whether the operator allows image builds on this runner.
    pub fn allows_builds(&self) -> bool {
        self.defaults.allow_builds
    }

    /// Whether a build may start from (or copy out of) `image`: the runner's
    /// default image or one its allow-list names, never a built one.
    pub fn build_base_allowed(&self, image: &str) -> bool {
        !image.starts_with(BUILD_PREFIX)
            && (image == self.defaults.image || image_allowed(image, &self.defaults.allowed_images))
    }

    /// Whether the engine has `image` (a build never pulls).
    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// Builds `build` unless an image of its hash exists; returns the image's
    /// name, and whether it existed. At most `limit` long, waiting for another
    /// build included; `on_output` sees the build's output as it comes.
    pub async fn build_image(
        &self,
        build: Build<'_>,
        limit: Duration,
        on_output: &mut (dyn FnMut(&[u8]) + Send),
    ) -> std::result::Result<(String, bool), BuildFailed> {
        let tag = format!("{BUILD_PREFIX}{}:latest", build.hash);
        touch(&tag);
        if self.has_image(&tag).await {
            return Ok((tag, true));
        }
        let failed = |message: String, output: &[u8]| BuildFailed {
            message,
            output: String::from_utf8_lossy(output).into_owned(),
        };
        let work = async {
            let _turn = one_at_a_time()
                .acquire()
                .await
                .map_err(|e| failed(e.to_string(), &[]))?;
            let options = BuildImageOptions {
                dockerfile: build.dockerfile.to_owned(),
                t: Some(tag.clone()),
                rm: true,
                forcerm: true,
                memory: Some(BUILD_MEMORY),
                memswap: Some(BUILD_MEMORY),
                cpuperiod: Some(BUILD_CPU_PERIOD),
                cpuquota: Some(BUILD_CPU_QUOTA),
                buildargs: Some(build.args.clone()),
                labels: Some(HashMap::from([(
                    LABEL_BUILD.to_owned(),
                    self.runner.clone(),
                )])),
                networkmode: Some("none".to_owned()),
                target: build.target.unwrap_or_default().to_owned(),
                ..Default::default()
            };
            let body = bollard::body_full(build.context.into());
            let mut stream = self.docker.build_image(options, None, Some(body));
            let mut output = Vec::new();
            while let Some(item) = stream.next().await {
                let info = match item {
                    Ok(info) => info,
                    Err(e) => return Err(failed(engine_error(&e), &output)),
                };
                if let Some(text) = &info.stream {
                    on_output(text.as_bytes());
                    output.extend_from_slice(text.as_bytes());
                    if output.len() > 2 * KEPT_OUTPUT {
                        output.drain(..output.len() - KEPT_OUTPUT);
                    }
                }
                if let Some(detail) = info.error_detail {
                    let message = detail.message.unwrap_or_else(|| "the build failed".into());
                    return Err(failed(message, &output));
                }
            }
            if !self.has_image(&tag).await {
                return Err(failed("the build made no image".to_owned(), &output));
            }
            touch(&tag);
            Ok((tag.clone(), false))
        };
        match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => Err(BuildFailed {
                message: format!(
                    "the build took longer than {} s and was stopped",
                    limit.as_secs()
                ),
                output: String::new(),
            }),
        }
    }
}

/// When each built image (by tag) was first seen with no container using it, by
/// this process: an image is removed once it has been unused for the runner's
/// `keep_unused_builds` (counted again from this runner's start).
fn unused_since() -> std::sync::MutexGuard<'static, HashMap<String, std::time::Instant>> {
    static UNUSED: OnceLock<std::sync::Mutex<HashMap<String, std::time::Instant>>> =
        OnceLock::new();
    UNUSED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A built image is about to be used (a create reuses it): its unused time
/// starts again, so a sweep does not take it between the build and the container.
fn touch(tag: &str) {
    unused_since().remove(tag);
}

impl DockerBackend {
    /// Removes this runner's built images no container (of any runner, any state)
    /// has used for `keep_unused_builds`; returns their tags. An image a snapshot
    /// was taken on keeps (the engine refuses to remove a parent).
    pub async fn remove_unused_builds(&self) -> Result<Vec<String>> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_BUILD}={}", self.runner)],
        )]);
        let images = self
            .docker
            .list_images(Some(bollard::query_parameters::ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .context("listing built images")?;
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .context("listing containers")?;
        let used: std::collections::HashSet<&str> = containers
            .iter()
            .filter_map(|c| c.image_id.as_deref())
            .collect();
        let keep_for = self.defaults.keep_unused_builds;
        let mut due = Vec::new();
        {
            let mut unused = unused_since();
            let now = std::time::Instant::now();
            let mut seen = std::collections::HashSet::new();
            for image in &images {
                let Some(tag) = image.repo_tags.iter().find(|t| t.starts_with(BUILD_PREFIX)) else {
                    continue;
                };
                seen.insert(tag.clone());
                if used.contains(image.id.as_str()) {
                    unused.remove(tag);
                    continue;
                }
                let since = *unused.entry(tag.clone()).or_insert(now);
                if now.duration_since(since) >= keep_for {
                    due.push(tag.clone());
                }
            }
            unused.retain(|tag, _| seen.contains(tag));
        }
        let mut removed = Vec::new();
        for tag in due {
            // A create that reused it since the list was made (touch) keeps it.
            if !unused_since().contains_key(&tag) {
                continue;
            }
            match self
                .docker
                .remove_image(
                    &tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
            {
                Ok(_) => {
                    unused_since().remove(&tag);
                    tracing::info!(image = %tag, "removed a built image no sandbox used");
                    removed.push(tag);
                }
                // In use again, or a snapshot's parent: kept.
                Err(e) => tracing::debug!(image = %tag, "keeping a built image: {e}"),
            }
        }
        Ok(removed)
    }
}

/// What the engine said, without bollard's wrapping.
fn engine_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
