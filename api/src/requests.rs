//! What the API accepts: request bodies and query strings. The gateway refuses
//! unknown fields; clients leave out what they do not set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What to create. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// An image reference (default: the runner's base image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A repository cloned into the workspace, and where pull requests push to: an
    /// `https://` URL (`http://` only where the operator allows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The branch made for the sandbox's work (default `warren/<sandbox-id>`); needs
    /// `repo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Let the owner's sessions forward their SSH agent (`ssh -A`) into the sandbox
    /// (default false). Code in the sandbox can then sign with the owner's keys while
    /// a session is open; never given to users the sandbox is shared with.
    #[serde(default)]
    pub forward_agent: bool,
    /// Environment for every session (at most 64; names `[A-Za-z_][A-Za-z0-9_]*`, not
    /// `WARREN_*`; values up to 32 KiB). Never stored by the gateway: it keeps it in
    /// memory, the runner in the sandbox (its container's config). `GITHUB_TOKEN`, if
    /// given, is also offered to git for cloning `repo`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// CPUs, 0.1 to 16 (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in MiB, 128 to 65536 (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Stopped after this many seconds without activity, 60 to 604800 (default: the
    /// runner's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
    /// Deleted this many seconds after creation, 60 to 31536000 (default: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u32>,
    /// Outbound network: `{"mode":"all"}` (default), `{"mode":"none"}`, or
    /// `{"mode":"allow","cidrs":["10.0.0.0/8"]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub network: Option<NetworkPolicy>,
    /// Disk quota in MiB, 256 to 1048576 (default: the runner's): the workspace,
    /// /tmp, /var/tmp and everything else the sandbox writes. Writes beyond it fail
    /// (ENOSPC) or the sandbox is stopped (`disk_quota`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u32>,
    /// Follow the repository's `.devcontainer/devcontainer.json` (or
    /// `.devcontainer.json`) if it has one (default true; only with `repo` and no
    /// `image`): its image, env and lifecycle commands; the sandbox's events say
    /// what it did and which keys were ignored or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devcontainer: Option<bool>,
    /// Make it from this snapshot of yours (`snp_…`): its file system, image,
    /// limits, network policy and env, on the runner that keeps it; `env`, `cpus`,
    /// `memory_mb`, `idle_timeout_s`, `ttl_s` and `branch` override. Not with
    /// `image`, `repo`, `network`, `disk_mb` or `devcontainer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Answer once the sandbox runs (default true). `false` answers at once, with
    /// the sandbox `creating`, for programs that poll: `GET /v1/sandboxes/{id}`
    /// until it is `running` (or `deleted`: the create failed; its events say why),
    /// and its events for a devcontainer.json's progress as it happens. Refusals
    /// found before anything is made (bad fields, no room, an image the runner does
    /// not allow) are answered as with `true`. A create from a `snapshot` always
    /// waits (it is quick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
}

/// Where a sandbox may connect to (as the tunnel's `NetworkPolicy` spells it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NetworkPolicy {
    /// Anywhere but other sandboxes and the cloud metadata address.
    #[default]
    All,
    /// No network at all (loopback only).
    None,
    /// Only these IPv4 CIDR blocks (e.g. `10.0.0.0/8`).
    Allow { cidrs: Vec<String> },
}

/// `GET /healthz`'s query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Readiness for a load balancer: `200` only when the store answers and at
    /// least one runner has a tunnel to this gateway, else `503` with the reason.
    /// Without it, `200` while the process serves (liveness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
}

/// `GET /v1/sandboxes`'s query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSandboxes {
    /// Page size, 1 to 500 (default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Also list deleted sandboxes.
    #[serde(default)]
    pub include_deleted: bool,
}

/// `GET /v1/sessions/{id}/recording`'s query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordingQuery {
    /// Which of the session's channels (its `seq`; default: the first recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 64 ASCII letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSshKey {
    /// A label; defaults to the key's comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// A label (default `api key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewShare {
    /// The account name to share with.
    pub user: String,
    /// Whether their sessions also get the sandbox's create-time environment (its
    /// secrets, e.g. `GITHUB_TOKEN`). Default false. Sharing again updates it.
    #[serde(default)]
    pub secrets: bool,
}

/// A pull request to open from the sandbox's work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePullRequest {
    /// The pull request's title (1 to 256 characters), also the commit's subject.
    pub title: String,
    /// Its description (Markdown, at most 60000 bytes), also the commit's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The branch to merge into (default: the repository's default branch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// How to merge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergePullRequest {
    /// `merge` (default), `squash` or `rebase`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub method: MergeMethod,
}

/// How to merge a pull request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    #[default]
    Merge,
    Squash,
    Rebase,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_request_sends_only_what_is_set() {
        let body = CreateSandbox {
            image: Some("alpine".into()),
            ..CreateSandbox::default()
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"image":"alpine","forward_agent":false}"#
        );
        let back: CreateSandbox = serde_json::from_str(r#"{"image":"alpine"}"#).unwrap();
        assert_eq!(back, body);
        assert!(serde_json::from_str::<CreateSandbox>(r#"{"imag":"x"}"#).is_err());
    }

    #[test]
    fn policies_and_merge_methods_read_as_the_api_spells_them() {
        let allow: NetworkPolicy =
            serde_json::from_str(r#"{"mode":"allow","cidrs":["10.0.0.0/8"]}"#).unwrap();
        assert_eq!(
            allow,
            NetworkPolicy::Allow {
                cidrs: vec!["10.0.0.0/8".into()]
            }
        );
        assert_eq!(
            serde_json::to_string(&NetworkPolicy::None).unwrap(),
            r#"{"mode":"none"}"#
        );
        let merge: MergePullRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(merge.method, MergeMethod::Merge);
        assert_eq!(
            serde_json::to_string(&MergeMethod::Squash).unwrap(),
            r#""squash""#
        );
    }
}
