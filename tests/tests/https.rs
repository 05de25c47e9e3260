//! The HTTP API over TLS (`warren_gateway::api::tls::serve_tls`) with a self-signed
//! identity made by `warren_keys::tls`, driven by the real curl (OpenSSL): the
//! certificate verifies when trusted and is refused when not, and clients that
//! speak garbage, plain HTTP or nothing at all do not get in the way of others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::Stack;
use tempfile::TempDir;
use warren_gateway::api::{self, ApiState};
use warren_gateway::lifecycle::Lifecycle;
use warren_keys::TokenSigner;
use warren_keys::tls::{TlsIdentity, load_or_generate_tls_identity};
use warren_tests::{Cmd, Output, Profile, build_bin};

/// The API served over TLS on 127.0.0.1 (a free port) with a fresh self-signed
/// identity in `dir`.
fn serve(stack: &Stack, dir: &TempDir) -> Result<(SocketAddr, TlsIdentity)> {
    let identity = load_or_generate_tls_identity(dir.path(), &["gw.test".into()])?;
    let served = load_or_generate_tls_identity(dir.path(), &[])?;
    ensure!(identity.generated() && !served.generated());
    let addr = stack.rt.block_on(async {
        let key = warren_keys::load_or_generate_host_key(&dir.path().join("host_key"))?;
        let host_key_line =
            russh::keys::PublicKey::new(key.public_key().key_data().clone(), "").to_openssh()?;
        let signer = TokenSigner::load_or_generate(&dir.path().join("token_signer"))?;
        let state = Arc::new(ApiState::over(Arc::new(Lifecycle::new(
            stack.store.clone(),
            stack.hub.clone(),
            Arc::new(signer),
            "127.0.0.1".into(),
            stack.ssh_port,
            host_key_line,
        ))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(api::tls::serve_tls(listener, api::router(state), served));
        anyhow::Ok(addr)
    })?;
    Ok((addr, identity))
}

/// `curl` with no CA configuration from the environment.
fn curl(args: &[&str]) -> Cmd {
    Cmd::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .timeout(Duration::from_secs(30))
}

fn healthz_with_ca(cert: &Path, url: &str) -> Result<Output> {
    let out = curl(&["--fail", "--cacert"])
        .arg(cert)
        .arg(url)
        .run()?
        .success()?;
    ensure!(
        out.stdout_str().contains("ok"),
        "healthz said {:?}",
        out.stdout_str()
    );
    Ok(out)
}

#[test]
fn https_verifies_with_the_certificate_and_not_without() -> Result<()> {
    let stack = Stack::start()?;
    let dir = TempDir::new()?;
    let (addr, identity) = serve(&stack, &dir)?;
    let cert = identity.cert_path().to_owned();
    let port = addr.port();

    // Trusted: by IP address and by name (both SANs), over TLS 1.3 and 1.2.
    healthz_with_ca(&cert, &format!("https://127.0.0.1:{port}/healthz"))?;
    curl(&[
        "--fail",
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "-o",
        "/dev/null",
        "--cacert",
    ])
    .arg(&cert)
    .arg(format!("https://127.0.0.1:{port}/healthz"))
    .run()?
    .success()
    .context("TLS 1.2")?;
    let by_name = curl(&["--fail", "--resolve"])
        .arg(format!("gw.test:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&cert)
        .arg(format!("https://gw.test:{port}/healthz"))
        .run()?
        .success()
        .context("an extra name given at generation")?;
    ensure!(by_name.stdout_str().contains("ok"));

    // The API answers as in plain HTTP (its JSON errors, request ids).
    let unauthorized = curl(&["-i", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{port}/v1/sandboxes"))
        .run()?;
    let text = unauthorized.stdout_str();
    ensure!(text.starts_with("HTTP/1.1 401"), "{text}");
    ensure!(text.to_ascii_lowercase().contains("x-request-id"), "{text}");

    // Untrusted: curl's own CA store does not know the certificate.
    let refused = curl(&[&format!("https://127.0.0.1:{port}/healthz")]).run()?;
    ensure!(
        refused.code() == Some(60),
        "curl without the CA should fail verification (exit 60), got {:?}: {}",
        refused.code(),
        refused.stderr_str()
    );
    // A name not in the certificate is refused even with it trusted.
    let wrong_name = curl(&["--resolve"])
        .arg(format!("other.test:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&cert)
        .arg(format!("https://other.test:{port}/healthz"))
        .run()?;
    ensure!(
        wrong_name.code() == Some(60),
        "a name outside the SANs: {:?} {}",
        wrong_name.code(),
        wrong_name.stderr_str()
    );

    // The fingerprint is the one OpenSSL prints for the file.
    let openssl = Cmd::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .run()?
        .success()?;
    let printed = openssl.stdout_trimmed();
    ensure!(
        printed.ends_with(&format!("={}", identity.fingerprint())),
        "openssl: {printed}, ours: {}",
        identity.fingerprint()
    );
    Ok(())
}

#[test]
fn the_cli_trusts_a_self_signed_gateway_given_its_certificate() -> Result<()> {
    let stack = Stack::start()?;
    let dir = TempDir::new()?;
    let (addr, identity) = serve(&stack, &dir)?;
    let api_key = stack.admin("alice")?;
    let home = TempDir::new()?;
    let warren = build_bin("warren-cli", "warren", Profile::Debug)?;
    let url = format!("https://127.0.0.1:{}", addr.port());
    let cli = |args: &[&str]| {
        Cmd::new(&warren)
            .args(args)
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("WARREN_URL")
            .env_remove("WARREN_CACERT")
            .timeout(Duration::from_secs(30))
    };
    let saved = home.path().join("warren").join("config.json");

    // Not trusted: refused, with what to do about it; nothing saved.
    let out = cli(&["login", "--url", &url])
        .env("WARREN_API_KEY", &api_key)
        .run()?;
    ensure!(
        out.code() == Some(1) && out.stderr_str().contains("--cacert"),
        "{out}"
    );
    ensure!(!saved.exists(), "a refused login saved a config");

    // Trusted: logged in, and later commands trust it from the saved config.
    cli(&["login", "--url", &url, "--cacert"])
        .arg(identity.cert_path())
        .env("WARREN_API_KEY", &api_key)
        .run()?
        .success()?;
    ensure!(
        std::fs::read_to_string(&saved)?.contains("ca_cert"),
        "the certificate is not in the saved config"
    );
    cli(&["list"])
        .env_remove("WARREN_API_KEY")
        .run()?
        .success()?;
    Ok(())
}

#[test]
fn bad_clients_do_not_disturb_others() -> Result<()> {
    let stack = Stack::start()?;
    let dir = TempDir::new()?;
    let (addr, identity) = serve(&stack, &dir)?;
    let cert = identity.cert_path().to_owned();
    let url = format!("https://127.0.0.1:{}/healthz", addr.port());

    // Connections that never start a handshake, held open throughout.
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(addr))
        .collect::<std::io::Result<_>>()?;
    // Garbage instead of a ClientHello, plain HTTP on the TLS port, a ClientHello
    // cut short, and a record header promising more than it sends.
    let mut noisy = Vec::new();
    let payloads: [&[u8]; 4] = [
        &[
            0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37, 0x42, 0x42, 0x42, 0x42,
        ],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        &[
            0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03,
        ],
        &[0x16, 0x03, 0x01, 0xff, 0xff],
    ];
    for payload in payloads {
        let mut stream = TcpStream::connect(addr)?;
        stream.write_all(payload)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        noisy.push(stream);
    }

    // Meanwhile good clients are served, promptly.
    for _ in 0..5 {
        let started = Instant::now();
        healthz_with_ca(&cert, &url)?;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "a good client waited {:?}",
            started.elapsed()
        );
    }

    // Garbage gets the connection closed (an alert at most), not an answer; the
    // cut-short handshakes are closed by the handshake timeout.
    for (i, stream) in noisy.iter_mut().enumerate() {
        let mut got = Vec::new();
        let started = Instant::now();
        let _ = stream.read_to_end(&mut got);
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "client {i} was never hung up on"
        );
        ensure!(
            !String::from_utf8_lossy(&got).contains("HTTP/1.1 200"),
            "client {i} got an answer in clear"
        );
        ensure!(got.len() < 64, "client {i} got {} bytes", got.len());
    }

    // A client that completes a handshake (verifying the certificate) and then
    // sends nonsense gets a 400, and the server goes on.
    let nonsense = Cmd::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(&cert)
        .stdin("NONSENSE\r\n\r\n")
        .timeout(Duration::from_secs(30))
        .run()?;
    ensure!(
        nonsense.stdout_str().starts_with("HTTP/1.1 400"),
        "{:?} {}",
        nonsense.stdout_str(),
        nonsense.stderr_str()
    );

    healthz_with_ca(&cert, &url)?;
    drop(silent);
    healthz_with_ca(&cert, &url)?;
    Ok(())
}
