//! The client against a fake API: a listener that records one request and gives a
//! canned answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use warren_api::{CreateSandbox, ErrorCode, ForkSandbox, ListSandboxes};

use super::{Client, Error};

/// One request as the fake API saw it: its request line, headers and body.
struct Seen {
    head: String,
    body: String,
}

impl Seen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

/// A fake API at the returned URL answering one request with `status` and `body`.
async fn fake_api(
    status: &'static str,
    body: &'static str,
) -> (String, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the body ended early");
            buf.extend_from_slice(&chunk[..n]);
        }
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        Seen {
            head,
            body: String::from_utf8_lossy(&buf[head_end..]).into_owned(),
        }
    });
    (url, task)
}

const SANDBOX: &str = r#"{"id":"sbx-1","state":"running","image":"default","repo":null,
    "branch":null,"forward_agent":false,"cpus":1.0,"memory_mb":1024,"idle_timeout_s":null,
    "ttl_s":null,"disk_mb":null,"runner_id":"run-1","created_at":1796599628,
    "updated_at":1796599628,"ssh":{"host":"localhost","port":2222,"user":"sbx-1"},
    "token":"wst1.secret"}"#;

#[tokio::test]
async fn a_create_sends_the_typed_body_with_the_key_and_reads_the_view() {
    let (url, seen) = fake_api("201 Created", SANDBOX).await;
    let api = Client::builder(&url, "wk_test").build().unwrap();
    let created = api
        .create_sandbox(&CreateSandbox {
            image: Some("alpine".into()),
            ..CreateSandbox::default()
        })
        .await
        .unwrap();
    assert_eq!(created.sandbox.id, "sbx-1");
    assert_eq!(created.sandbox.ssh.port, 2222);
    assert_eq!(created.token, "wst1.secret");
    let seen = seen.await.unwrap();
    assert_eq!(seen.request_line(), "POST /v1/sandboxes HTTP/1.1");
    assert!(
        seen.head
            .to_ascii_lowercase()
            .contains("authorization: bearer wk_test"),
        "{}",
        seen.head
    );
    assert_eq!(seen.body, r#"{"image":"alpine","forward_agent":false}"#);
}

#[tokio::test]
async fn a_fork_sends_its_count_and_reads_the_forks() {
    const FORKED: &str = r#"{"snapshot":{"id":"snp_0123456789abcdef","name":null,
        "source":"sbx-0","owner":"usr-1","runner":"run-1","image":"default","repo":null,
        "size_bytes":4096,"frozen_ms":120,"created_at":1796599628},"frozen_ms":120,
        "sandboxes":[{"id":"sbx-1","state":"running","image":"default","repo":null,
        "branch":"try-1","forward_agent":false,"cpus":1.0,"memory_mb":1024,
        "idle_timeout_s":null,"ttl_s":null,"disk_mb":null,"runner_id":"run-1",
        "created_at":1796599628,"updated_at":1796599628,
        "ssh":{"host":"localhost","port":2222,"user":"sbx-1"},"token":"wst1.secret"}]}"#;
    let (url, seen) = fake_api("201 Created", FORKED).await;
    let api = Client::builder(&url, "wk_test").build().unwrap();
    let request = ForkSandbox {
        count: 2,
        branch_prefix: Some("try".into()),
    };
    let forked = api.fork_sandbox("sbx-0", &request).await.unwrap();
    assert_eq!(forked.frozen_ms, 120);
    assert_eq!(forked.sandboxes[0].sandbox.branch.as_deref(), Some("try-1"));
    let seen = seen.await.unwrap();
    assert_eq!(
        seen.request_line(),
        "POST /v1/sandboxes/sbx-0/fork HTTP/1.1"
    );
    assert_eq!(seen.body, r#"{"count":2,"branch_prefix":"try"}"#);
}

#[tokio::test]
async fn a_refusal_carries_the_code_message_and_request_id() {
    let (url, _seen) = fake_api(
        "503 Service Unavailable",
        r#"{"error":{"code":"no_runner","message":"no runner is online","request_id":"req-abc"}}"#,
    )
    .await;
    let api = Client::builder(url, "wk_test").build().unwrap();
    let err = api.get_sandbox("sbx-1").await.unwrap_err();
    match &err {
        Error::Api {
            status,
            code,
            message,
            request_id,
        } => {
            assert_eq!(*status, 503);
            assert_eq!(*code, ErrorCode::NoRunner);
            assert_eq!(message, "no runner is online");
            assert_eq!(request_id, "req-abc");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "no runner is online (HTTP 503)");
    assert_eq!(err.code(), Some(ErrorCode::NoRunner));
}

/// What `GET /healthz` fails with when the API answers `status` and `body`.
async fn health_error(status: &'static str, body: &'static str) -> Error {
    let (url, _seen) = fake_api(status, body).await;
    let api = Client::builder(url, "k").build().unwrap();
    api.health().await.unwrap_err()
}

#[tokio::test]
async fn an_unknown_code_or_a_foreign_page_still_says_what_happened() {
    let err = health_error(
        "418 I'm a teapot",
        r#"{"error":{"code":"teapot","message":"short and stout","request_id":"r"}}"#,
    )
    .await;
    assert_eq!(err.to_string(), "short and stout (HTTP 418)");
    assert_eq!(err.code(), None);

    let err = health_error("502 Bad Gateway", "<html>proxy</html>").await;
    assert_eq!(err.to_string(), "<html>proxy</html> (HTTP 502)");
    assert_eq!(err.status(), Some(502));
}

#[tokio::test]
async fn ids_cannot_leave_their_path_segment_and_a_base_path_is_kept() {
    let (url, seen) = fake_api("200 OK", SANDBOX).await;
    let api = Client::builder(format!("{url}/warren/"), "k")
        .build()
        .unwrap();
    api.stop_sandbox("../../v1/users").await.unwrap();
    assert_eq!(
        seen.await.unwrap().request_line(),
        "POST /warren/v1/sandboxes/..%2F..%2Fv1%2Fusers/stop HTTP/1.1"
    );
}

#[tokio::test]
async fn a_list_sends_only_the_query_it_sets() {
    let (url, seen) = fake_api("200 OK", r#"{"sandboxes":[],"next_cursor":null}"#).await;
    let api = Client::builder(&url, "k").build().unwrap();
    let page = api.list_sandboxes(&ListSandboxes::default()).await.unwrap();
    assert!(page.sandboxes.is_empty() && page.next_cursor.is_none());
    assert_eq!(
        seen.await.unwrap().request_line(),
        "GET /v1/sandboxes HTTP/1.1"
    );

    let (url, seen) = fake_api("200 OK", r#"{"sandboxes":[],"next_cursor":null}"#).await;
    let api = Client::builder(&url, "k").build().unwrap();
    api.list_sandboxes(&ListSandboxes {
        limit: Some(1),
        cursor: Some("a b".into()),
        include_deleted: true,
    })
    .await
    .unwrap();
    assert_eq!(
        seen.await.unwrap().request_line(),
        "GET /v1/sandboxes?limit=1&cursor=a+b&include_deleted=true HTTP/1.1"
    );
}

#[tokio::test]
async fn an_unreachable_api_is_named_and_a_bad_url_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = Client::builder(&url, "wk_secret")
        .build()
        .unwrap()
        .health()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach the Warren API at {url}")
    );
    assert!(!format!("{err:?}").contains("wk_secret"));
    assert!(matches!(
        Client::builder("localhost:8080", "k").build(),
        Err(Error::BadUrl(_))
    ));
    assert!(matches!(
        Client::builder("http://x", "k").ca_certificate_pem(b"not pem"),
        Err(Error::Certificate)
    ));
}
