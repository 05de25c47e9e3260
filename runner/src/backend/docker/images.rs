//! Which images a sandbox may run (the operator's allow-list), looking them up, and
//! the static agent binary every container runs.

use super::*;

impl DockerBackend {
    /// The image `spec` names (or the default one), which must be allowed on this
    /// runner (`allowed_images`) and be on this engine.
    pub(crate) async fn image_info(
        &self,
        spec: &SandboxSpec,
    ) -> crate::Result<bollard::models::ImageInspect> {
        let image = spec.image.as_deref().unwrap_or(&self.defaults.image);
        // A built image only through the build that made it for this sandbox
        // (whatever the allow-list says): it may hold another tenant's build
        // arguments.
        let built = image.starts_with(build::BUILD_PREFIX);
        let is_default = image == self.defaults.image || (built && spec.built);
        let allowed = |r: &str| image_allowed(r, &self.defaults.allowed_images);
        // A refused image and a missing one get the same code and message (the
        // gateway makes `image_not_found` a 422): the allow-list is checked before
        // the engine is asked, so whether a refused image exists is never looked
        // up, and the one refusal that comes after the lookup (below) must not
        // tell "exists but refused" from "missing". A code of its own would add
        // nothing a tenant can act on that the message does not already say.
        let unavailable = || {
            let mut shown = vec![self.defaults.image.as_str()];
            shown.extend(self.defaults.allowed_images.iter().map(String::as_str));
            crate::Error::refused(
                "image_not_found",
                format!(
                    "image {image:?} is not on this runner (allowed here: {}); its operator \
                     builds or loads images (images/build-base, docker load) and allows \
                     others with --allow-image",
                    shown.join(", ")
                ),
            )
        };
        if !is_default && (built || !allowed(image)) {
            return Err(unavailable());
        }
        let info = self.docker.inspect_image(image).await.map_err(|e| {
            if is_not_found(&e) {
                unavailable()
            } else {
                anyhow::Error::new(e).context("inspecting the image").into()
            }
        })?;
        // The engine also finds images by (a prefix of) their id: `deadbeef` may
        // match a pattern `dead*` and be some other image. What was found must
        // itself carry an allowed name.
        let names = || info.repo_tags.iter().chain(&info.repo_digests).flatten();
        if !is_default && !names().any(|n| allowed(n)) {
            return Err(unavailable());
        }
        // Nor is a built image reached by its id.
        if !spec.built && names().any(|n| n.starts_with(build::BUILD_PREFIX)) {
            return Err(unavailable());
        }
        Ok(info)
    }
}

/// The images a runner allows when its operator names none: Warren's own
/// (`warren-base`, `warren-busybox`, and the test images made from them).
pub const DEFAULT_ALLOWED_IMAGES: [&str; 1] = ["warren-*"];

/// Whether the image reference `image` matches one of `patterns`. A pattern is a
/// reference, matched exactly, or a prefix followed by `*`. A reference naming no
/// tag (nor digest) means `:latest`, in patterns as in `image`. References are
/// compared as written: `python:3.12` is not `docker.io/library/python:3.12`.
pub fn image_allowed(image: &str, patterns: &[String]) -> bool {
    let image = with_tag(image);
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => image == with_tag(p),
    })
}

/// `reference` with `:latest` added when it names neither tag nor digest (a `:`
/// before the last `/` is a registry's port, not a tag).
fn with_tag(reference: &str) -> std::borrow::Cow<'_, str> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.into()
    } else {
        format!("{reference}:latest").into()
    }
}

/// The agent runs in images without a libc: it must be a static executable (an ELF
/// file without a PT_INTERP program header).
pub fn ensure_static(agent: &std::path::Path) -> Result<()> {
    let elf = fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        bail!("{} is not a 64-bit ELF executable", agent.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} is truncated", agent.display());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        let p_type = elf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if p_type == Some(PT_INTERP) {
            bail!(
                "{} is dynamically linked; the docker backend needs the static agent \
                 (scripts/build-static-agent prints its path)",
                agent.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn images_are_allowed_by_exact_reference_or_prefix() {
        let patterns = |ps: &[&str]| ps.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        let default = DockerDefaults::default().allowed_images;
        for ok in [
            "warren-base:latest",
            "warren-base",
            "warren-busybox:latest",
            "warren-test-toor:latest",
        ] {
            assert!(image_allowed(ok, &default), "{ok}");
        }
        for refused in [
            "acme-private:1",
            "acme-private",
            "python:3.12",
            "docker.io/library/warren-base:latest",
            "ghcr.io/acme/warren-base:latest",
            "",
        ] {
            assert!(!image_allowed(refused, &default), "{refused}");
        }

        let p = patterns(&[
            "python:3.12",
            "debian",
            "ghcr.io/acme/*",
            "localhost:5000/x",
        ]);
        assert!(image_allowed("python:3.12", &p));
        assert!(!image_allowed("python:3.13", &p));
        assert!(!image_allowed("python", &p));
        // No tag means `:latest`, in the pattern as in the reference.
        assert!(image_allowed("debian", &p));
        assert!(image_allowed("debian:latest", &p));
        assert!(!image_allowed("debian:12", &p));
        assert!(image_allowed("ghcr.io/acme/tool:1", &p));
        assert!(image_allowed("ghcr.io/acme/team/tool", &p));
        assert!(!image_allowed("ghcr.io/acmeco/tool:1", &p));
        assert!(!image_allowed("ghcr.io/acme", &p));
        // A registry's port is not a tag.
        assert!(image_allowed("localhost:5000/x", &p));
        assert!(image_allowed("localhost:5000/x:latest", &p));
        assert!(!image_allowed("localhost:5000/x:2", &p));
        // A digest is no tag either, and gets no `:latest`.
        assert!(!image_allowed("debian@sha256:0123", &p));
        assert!(image_allowed(
            "debian@sha256:0123",
            &patterns(&["debian@*"])
        ));

        // A tagged prefix pattern, and `*` alone: everything.
        let p = patterns(&["warren-base:*"]);
        assert!(image_allowed("warren-base", &p));
        assert!(image_allowed("warren-base:dev", &p));
        assert!(!image_allowed("warren-based:dev", &p));
        assert!(image_allowed("anything/at:all", &patterns(&["*"])));
        assert!(!image_allowed("warren-base", &[]));
    }
}
