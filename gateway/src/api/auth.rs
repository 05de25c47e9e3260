//! Bearer authentication with API keys.
//!
//! `Authorization: Bearer wk_…`. The key is looked up by its prefix and compared
//! with the stored hash in constant time by the store
//! ([`warren_store::Store::find_user_by_api_key`]); revoked keys are refused. The
//! key itself is never logged or echoed. An address that presents 30 bad keys (or
//! none) within a minute gets 429 until the minute is over (the SSH front door's
//! [`crate::guard::FailureLimiter`]; behind a proxy, every client shares its address).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use warren_store::{ApiKeyId, User};

use super::ApiState;
use super::error::ApiError;
use crate::lifecycle::{Error, ErrorCode};

/// Longer `Authorization` values are refused unread (real keys are ~50 bytes).
const MAX_AUTHORIZATION_LEN: usize = 512;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// The API key the request was made with.
    pub key_id: ApiKeyId,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.is_admin {
            Ok(())
        } else {
            Err(Error::forbidden().into())
        }
    }
}

/// The secret in an `Authorization: Bearer <secret>` header value.
fn bearer(value: &[u8]) -> Option<&str> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let secret = secret.trim();
    let plausible = secret.starts_with("wk_")
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    plausible.then_some(secret)
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if peer.is_some_and(|ip| !state.limiter.allows(ip)) {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                "too many requests with invalid API keys from this address; wait a minute",
            ));
        }
        let found = match parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
        {
            Some(secret) => state.lifecycle.store.find_user_by_api_key(secret).await?,
            None => None,
        };
        match found {
            Some(owner) => Ok(Caller {
                user: owner.user,
                key_id: owner.key_id,
            }),
            None => {
                if let Some(ip) = peer {
                    state.limiter.failed(ip);
                }
                Err(ApiError::unauthorized())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer wk_abc-DEF_1"), Some("wk_abc-DEF_1"));
        assert_eq!(bearer(b"bearer wk_x"), Some("wk_x"));
        assert_eq!(bearer(b"Basic wk_x"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer wst1.abc"), None);
        assert_eq!(bearer(b"Bearer wk_a b"), None);
        assert_eq!(bearer(b"Bearer wk_\xff"), None);
        let long = format!("Bearer wk_{}", "a".repeat(600));
        assert_eq!(bearer(long.as_bytes()), None);
    }
}
