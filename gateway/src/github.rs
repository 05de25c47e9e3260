//! A small client for the two GitHub REST endpoints the API's pull requests use:
//! `POST /repos/{owner}/{repo}/pulls` and `PUT /repos/{owner}/{repo}/pulls/{n}/merge`.
//!
//! The API base is configurable (`https://api.github.com`, or `https://HOST/api/v3`
//! for GitHub Enterprise). Tokens of any kind (PATs, OAuth, App installation tokens)
//! are sent as they are, as `Authorization: Bearer <token>`, and never logged or put
//! into a message.

use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

/// GitHub's public API.
pub const DEFAULT_API_BASE: &str = "https://api.github.com";
/// The environment variable that overrides [`DEFAULT_API_BASE`].
pub const API_BASE_ENV: &str = "WARREN_GITHUB_API";
/// One request to GitHub may take this long.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest GitHub message passed on.
const MAX_MESSAGE: usize = 2000;

/// The API base from [`API_BASE_ENV`], else [`DEFAULT_API_BASE`].
pub fn api_base_from_env() -> String {
    std::env::var(API_BASE_ENV)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_API_BASE.to_owned())
}

/// A repository on GitHub: `owner/repo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub owner: String,
    pub repo: String,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl RepoRef {
    /// `owner/repo` from a clone URL: the last two path segments of
    /// `https://host/owner/repo(.git)`, `ssh://git@host/owner/repo.git`,
    /// `git@host:owner/repo.git` (or a local path ending the same way), with
    /// `.git` and trailing slashes dropped.
    pub fn parse(url: &str) -> Option<RepoRef> {
        let url = url.trim();
        let path = match url.find("://") {
            Some(i) => {
                let rest = &url[i + 3..];
                &rest[rest.find('/')?..]
            }
            // scp-like `user@host:path` (no slash before the colon).
            None => match url.split_once(':') {
                Some((host, path)) if !host.contains('/') => path,
                _ => url,
            },
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let mut segments = path.split('/').filter(|s| !s.is_empty()).rev();
        let repo = segments.next()?;
        let owner = segments.next()?;
        let repo = repo.strip_suffix(".git").unwrap_or(repo);
        (name_ok(owner) && name_ok(repo)).then(|| RepoRef {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
        })
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.repo)
    }
}

/// What went wrong talking to GitHub; messages hold no secrets.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// GitHub answered with an error status; `message` is GitHub's.
    #[error("GitHub refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// No usable answer (connection, TLS, timeout, a body that is not JSON).
    #[error("GitHub's API did not answer usably: {0}")]
    Unreachable(String),
}

/// An opened pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    /// The page people open (`html_url`).
    pub url: String,
}

/// The result of a merge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Merged {
    #[serde(default)]
    pub merged: bool,
    #[serde(default)]
    pub sha: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// How to merge a pull request (as the API's request says it; GitHub spells it
/// the same).
pub use warren_api::MergeMethod;

/// The GitHub API at `api_base`.
#[derive(Debug, Clone)]
pub struct GitHub {
    api_base: String,
}

fn http() -> Result<&'static reqwest::Client, GitHubError> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(TIMEOUT)
                .user_agent(concat!("warren-gateway/", env!("CARGO_PKG_VERSION")))
                .build()
                .ok()
        })
        .as_ref()
        .ok_or_else(|| GitHubError::Unreachable("could not set up an HTTP client".into()))
}

/// GitHub's error body: `{message, errors: [{message} | {resource, field, code}]}`.
fn error_message(body: &str, token: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(json) => {
            let mut parts = Vec::new();
            if let Some(m) = json["message"].as_str() {
                parts.push(m.to_owned());
            }
            for e in json["errors"].as_array().into_iter().flatten() {
                if let Some(m) = e["message"].as_str() {
                    parts.push(m.to_owned());
                } else if let Some(code) = e["code"].as_str() {
                    let field = e["field"].as_str().unwrap_or_default();
                    parts.push(format!("{field} {code}").trim().to_owned());
                } else if let Some(m) = e.as_str() {
                    parts.push(m.to_owned());
                }
            }
            if parts.is_empty() {
                body.trim().to_owned()
            } else {
                parts.join(": ")
            }
        }
        Err(_) => body.trim().to_owned(),
    };
    let text = if token.is_empty() {
        text
    } else {
        text.replace(token, "<redacted>")
    };
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None if text.is_empty() => "no message".to_owned(),
        None => text,
    }
}

impl GitHub {
    pub fn new(api_base: &str) -> GitHub {
        GitHub {
            api_base: api_base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, GitHubError> {
        let response = http()?
            .request(method, format!("{}{path}", self.api_base))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(body)
            .send()
            .await
            // reqwest's errors name the URL (no credentials in it), never headers.
            .map_err(|e| GitHubError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| GitHubError::Unreachable(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(GitHubError::Refused {
                status: status.as_u16(),
                message: error_message(&text, token),
            });
        }
        serde_json::from_str(&text)
            .map_err(|_| GitHubError::Unreachable(format!("the answer ({status}) is not JSON")))
    }

    /// Opens a pull request of `head` into `base`.
    pub async fn create_pull(
        &self,
        token: &str,
        repo: &RepoRef,
        title: &str,
        head: &str,
        base: &str,
        body: Option<&str>,
    ) -> Result<PullRequest, GitHubError> {
        let mut request = serde_json::json!({"title": title, "head": head, "base": base});
        if let Some(body) = body {
            request["body"] = body.into();
        }
        let answer = self
            .send(
                reqwest::Method::POST,
                &format!("/repos/{}/{}/pulls", repo.owner, repo.repo),
                token,
                &request,
            )
            .await?;
        let number = answer["number"]
            .as_u64()
            .ok_or_else(|| GitHubError::Unreachable("the answer has no number".into()))?;
        let url = answer["html_url"]
            .as_str()
            .or_else(|| answer["url"].as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(PullRequest { number, url })
    }

    /// Merges pull request `number` with `method`.
    pub async fn merge_pull(
        &self,
        token: &str,
        repo: &RepoRef,
        number: u64,
        method: MergeMethod,
    ) -> Result<Merged, GitHubError> {
        let answer = self
            .send(
                reqwest::Method::PUT,
                &format!("/repos/{}/{}/pulls/{number}/merge", repo.owner, repo.repo),
                token,
                &serde_json::json!({ "merge_method": method }),
            )
            .await?;
        serde_json::from_value(answer)
            .map_err(|_| GitHubError::Unreachable("the merge answer is not understood".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> Option<String> {
        RepoRef::parse(url).map(|r| r.to_string())
    }

    #[test]
    fn repo_urls() {
        for url in [
            "https://github.com/acme/widgets",
            "https://github.com/acme/widgets.git",
            "https://github.com/acme/widgets/",
            "https://x-access-token:t@ghe.example.com/acme/widgets.git",
            "ssh://git@github.com:22/acme/widgets.git",
            "git@github.com:acme/widgets.git",
            "/srv/git/acme/widgets.git",
            "file:///srv/git/acme/widgets",
        ] {
            assert_eq!(parsed(url).as_deref(), Some("acme/widgets"), "{url}");
        }
        for url in [
            "https://github.com/widgets",
            "git@github.com:widgets.git",
            "https://github.com/acme/..",
            "https://github.com/ac me/widgets",
        ] {
            assert_eq!(parsed(url), None, "{url}");
        }
    }

    #[test]
    fn github_messages() {
        let body = r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest",
            "code":"custom","message":"A pull request already exists for acme:x."}]}"#;
        assert_eq!(
            error_message(body, "tok"),
            "Validation Failed: A pull request already exists for acme:x."
        );
        assert_eq!(
            error_message(r#"{"message":"Bad tok"}"#, "tok"),
            "Bad <redacted>"
        );
        assert_eq!(error_message("", ""), "no message");
        assert_eq!(
            serde_json::to_string(&MergeMethod::Squash).unwrap(),
            r#""squash""#
        );
    }
}
