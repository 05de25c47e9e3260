//! The request being served: an id made per HTTP request (and sent back as
//! `x-request-id`), kept in a task-local for the request's future, so that an error
//! logged anywhere in the lifecycle while serving it can name it.

use std::future::Future;

use ring::rand::{SecureRandom, SystemRandom};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id (empty outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Runs `work` as the request `id`.
pub async fn serve_as<F: Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// A new request id: `req-` and 16 random letters and digits.
pub fn new_request_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // Not a secret: a clock-based id is good enough to correlate logs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("req-t{nanos}");
    }
    let mut id = String::from("req-");
    id.extend(
        bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)])),
    );
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_the_request_s_inside_and_empty_outside() {
        let id = new_request_id();
        assert!(id.starts_with("req-") && id.len() == 20, "{id}");
        assert_eq!(current_request_id(), "");
        let inside = serve_as(id.clone(), async { current_request_id() }).await;
        assert_eq!(inside, id);
    }
}
