//! Every error code the API sends, each with its HTTP status.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable and machine-readable: what went wrong, as `error.code` says it, each
/// with its HTTP status: `invalid_request` 422 (400 when the request could not be
/// read at all), `unauthorized` 401, `forbidden` 403, `not_found` 404,
/// `method_not_allowed` 405, `conflict` 409, `payload_too_large` 413,
/// `unsupported_media_type` 415, `too_many_requests` 429, `image_not_found` 422,
/// `nothing_to_commit` 409, `no_repo` 409, `no_credentials` 409, `no_runner` 503,
/// `no_capacity` 503, `runner_offline` 503, `store_unavailable` 503,
/// `runner_error` 502, `upstream_error` 502, `internal` 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 422 (or 400: unreadable): a field is refused.
    InvalidRequest,
    /// 401: no valid API key.
    Unauthorized,
    /// 403: this needs an admin account.
    Forbidden,
    /// 404: no such thing, or not the caller's (the two look the same).
    NotFound,
    /// 405: the route does not take that method.
    MethodNotAllowed,
    /// 409: not in a state that allows it.
    Conflict,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 415: the request body is not JSON.
    UnsupportedMediaType,
    /// 429: too many requests with invalid API keys from this address.
    TooManyRequests,
    /// 422: the image is not on the runner.
    ImageNotFound,
    /// 409: a pull request with nothing to commit.
    NothingToCommit,
    /// 409: a pull request from a sandbox without a repo it can push to.
    NoRepo,
    /// 409: a pull request or merge with no GitHub token known for the sandbox.
    NoCredentials,
    /// 503: no runner is online.
    NoRunner,
    /// 503: no runner has room for the sandbox (the message says why).
    NoCapacity,
    /// 503: the sandbox's runner is offline.
    RunnerOffline,
    /// 503: the gateway cannot reach its database (restarting, say); try again.
    StoreUnavailable,
    /// 502: a runner refused or failed the request (its message is shown).
    RunnerError,
    /// 502: the git remote or GitHub refused (their message is shown).
    UpstreamError,
    /// 500: a bug or the database; the gateway's log has the details.
    Internal,
}

/// A code this version does not know (a newer gateway's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownErrorCode(pub String);

impl ErrorCode {
    /// Every code, in the order declared.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TooManyRequests,
        ErrorCode::ImageNotFound,
        ErrorCode::NothingToCommit,
        ErrorCode::NoRepo,
        ErrorCode::NoCredentials,
        ErrorCode::NoRunner,
        ErrorCode::NoCapacity,
        ErrorCode::RunnerOffline,
        ErrorCode::StoreUnavailable,
        ErrorCode::RunnerError,
        ErrorCode::UpstreamError,
        ErrorCode::Internal,
    ];

    /// The code as sent (`no_runner`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::NothingToCommit => "nothing_to_commit",
            ErrorCode::NoRepo => "no_repo",
            ErrorCode::NoCredentials => "no_credentials",
            ErrorCode::NoRunner => "no_runner",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::RunnerOffline => "runner_offline",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::RunnerError => "runner_error",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the API answers this code with (`invalid_request`: 422; the
    /// API sends 400 instead when the request could not be read at all).
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::ImageNotFound => 422,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict
            | ErrorCode::NothingToCommit
            | ErrorCode::NoRepo
            | ErrorCode::NoCredentials => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::NoRunner
            | ErrorCode::NoCapacity
            | ErrorCode::RunnerOffline
            | ErrorCode::StoreUnavailable => 503,
            ErrorCode::RunnerError | ErrorCode::UpstreamError => 502,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<ErrorCode, UnknownErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_code_reads_back_and_serializes_as_its_text() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&format!("\"{code}\"")).unwrap(),
                code
            );
        }
        let mut texts: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), ErrorCode::ALL.len(), "a code is listed twice");
    }

    #[test]
    fn the_documentation_gives_each_code_its_status() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(ErrorCode::schema()).unwrap();
        let text = schema["description"].as_str().unwrap().replace('\n', " ");
        for code in ErrorCode::ALL {
            let status = code.status();
            assert!(
                text.contains(&format!("`{code}` {status}")),
                "the description does not say `{code}` {status}: {text}"
            );
        }
    }

    #[test]
    fn statuses_are_errors_and_unknown_codes_are_refused() {
        assert!(
            ErrorCode::ALL
                .iter()
                .all(|c| (400..600).contains(&c.status()))
        );
        assert_eq!(ErrorCode::NoRunner.status(), 503);
        assert_eq!(ErrorCode::NotFound.status(), 404);
        assert_eq!(
            "no_such_code".parse::<ErrorCode>(),
            Err(UnknownErrorCode("no_such_code".into()))
        );
    }
}
