//! What a repository's Dockerfile may ask of a build, checked before the engine
//! sees it: every image it starts from or copies out of (`FROM`, `COPY --from`)
//! must be an earlier stage or an image the runner allows, written out (no
//! `${…}`, which a build argument could turn into anything), and nothing may be
//! fetched by the engine itself (`ADD` of a URL or a git repository: the engine
//! fetches those from the runner host's network, whatever the build's own network
//! is). Pure: the text is the tenant's, nothing is run here.

/// Why a Dockerfile is refused, safe to show its author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct Refusal {
    pub line: usize,
    pub message: String,
}

/// The images a Dockerfile starts from or copies out of, each with its line, in
/// order (stage names and indexes are left out), or why it is refused. `allowed`
/// says whether an image reference may be used.
pub fn check(text: &str, allowed: impl Fn(&str) -> bool) -> Result<Vec<String>, Refusal> {
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let directive = line.trim_start().strip_prefix('#').map(|d| {
            d.trim_start()
                .to_ascii_lowercase()
                .replace(' ', "")
                .starts_with("escape=")
        });
        if directive == Some(true) {
            return Err(Refusal {
                line: i + 1,
                message: "the escape directive is not allowed".to_owned(),
            });
        }
    }
    for (line, instruction) in instructions(text) {
        let refuse = |message: String| Refusal { line, message };
        let mut words = instruction.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let args: Vec<&str> = words.collect();
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let plain: Vec<&str> = args
                    .iter()
                    .copied()
                    .filter(|a| !a.starts_with("--platform="))
                    .collect();
                if let Some(flag) = plain.iter().find(|a| a.starts_with("--")) {
                    return Err(refuse(format!("FROM {flag} is not allowed")));
                }
                let (image, alias) = match plain.as_slice() {
                    [image] => (*image, None),
                    [image, r#as, alias] if r#as.eq_ignore_ascii_case("as") => {
                        (*image, Some(*alias))
                    }
                    _ => return Err(refuse("FROM needs an image (and `AS name`)".to_owned())),
                };
                source(image, &stages, &allowed, &mut images).map_err(refuse)?;
                stages.push(alias.unwrap_or("").to_ascii_lowercase());
            }
            "COPY" | "ADD" => {
                for arg in args.iter().take_while(|a| a.starts_with("--")) {
                    if let Some(from) = arg.strip_prefix("--from=") {
                        source(from, &stages, &allowed, &mut images).map_err(refuse)?;
                    }
                }
                if keyword.eq_ignore_ascii_case("ADD") {
                    let fetched = args
                        .iter()
                        .filter(|a| !a.starts_with("--"))
                        .any(|a| a.contains("://") || a.starts_with("git@"));
                    if fetched {
                        return Err(refuse(
                            "ADD of a URL or repository is refused: the engine would fetch it \
                             from the runner host's network (download it in the repository, or \
                             with RUN where the sandbox's network allows)"
                                .to_owned(),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        return Err(Refusal {
            line: 1,
            message: "no FROM".to_owned(),
        });
    }
    Ok(images)
}

/// An image a stage starts from or copies out of: an earlier stage (by name or
/// index), or an allowed image written out.
fn source(
    image: &str,
    stages: &[String],
    allowed: &impl Fn(&str) -> bool,
    images: &mut Vec<String>,
) -> Result<(), String> {
    let lower = image.to_ascii_lowercase();
    if !lower.is_empty() && stages.contains(&lower) {
        return Ok(());
    }
    if image.parse::<usize>().is_ok_and(|i| i < stages.len()) {
        return Ok(());
    }
    if image.contains('$') {
        return Err(format!(
            "{image:?}: images must be written out, not made of build arguments"
        ));
    }
    if image.eq_ignore_ascii_case("scratch") || !allowed(image) {
        return Err(format!(
            "{image:?} is not an image this runner allows builds from (its --allow-image list)"
        ));
    }
    if !images.iter().any(|i| i == image) {
        images.push(image.to_owned());
    }
    Ok(())
}

/// The instructions of a Dockerfile with the line each starts on: comments and
/// blank lines dropped, `\` continuations joined. (The classic builder reads no
/// heredocs; an `# escape=` directive, which would make lines join differently
/// from how they are read here, is refused by [`check`].)
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        // Comment lines inside a continued instruction are skipped, as Docker does.
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (part, continued) = match trimmed.strip_suffix('\\') {
            Some(part) => (part, true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push_str(part);
        entry.1.push(' ');
        if !continued && let Some(done) = current.take() {
            out.push(done);
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn allowed(image: &str) -> bool {
        image.starts_with("warren-")
    }

    #[test]
    fn stages_and_allowed_images_pass() {
        let text = "# syntax note\n\
                    ARG V=1\n\
                    FROM warren-base:latest AS build\n\
                    RUN echo \\\n  continued\n\
                    FROM --platform=linux/amd64 warren-busybox\n\
                    COPY --from=build /a /b\n\
                    COPY --from=0 /a /c\n\
                    COPY --chown=1:1 --from=warren-base /etc/os-release /d\n\
                    ADD local.tar /x/\n";
        assert_eq!(
            check(text, allowed).unwrap(),
            ["warren-base:latest", "warren-busybox", "warren-base"]
        );
    }

    #[test]
    fn refusals_name_their_line() {
        let cases = [
            ("FROM python:3.12\n", 1, "not an image this runner allows"),
            ("\n\nFROM ${BASE}\n", 3, "written out"),
            ("FROM warren-base\nCOPY --from=alpine /x /y\n", 2, "alpine"),
            (
                "FROM warren-base\nADD https://example.com/x /x\n",
                2,
                "runner host's network",
            ),
            (
                "FROM warren-base\nADD --chown=1 git@github.com:a/b /b\n",
                2,
                "repository",
            ),
            ("FROM scratch\n", 1, "scratch"),
            ("FROM --network=host warren-base\n", 1, "--network"),
            ("RUN echo hi\n", 1, "no FROM"),
            ("# escape=`\nFROM warren-base\n", 1, "escape"),
            ("FROM warren-base AS\n", 1, "needs an image"),
            (
                "FROM warren-base AS a\nFROM A\nCOPY --from=1 /x /y\nCOPY --from=2 /x /y\n",
                4,
                "\"2\"",
            ),
        ];
        for (text, line, words) in cases {
            let refused = check(text, allowed).unwrap_err();
            assert_eq!(refused.line, line, "{text}: {refused}");
            assert!(refused.to_string().contains(words), "{text}: {refused}");
        }
    }
}
