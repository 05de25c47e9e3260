//! The process backend on its own: what it hands the agent it starts.

use anyhow::{Context, Result, ensure};
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::backend::process::ProcessBackend;
use warren_runner::protocol::SandboxSpec;
use warren_tests::bin_path;

/// A token key is URL-safe base64 and starts with '-' once in 64: the agent must
/// still take it (as a separate argument, clap read it as a flag and the agent
/// exited with a usage error).
#[tokio::test]
async fn a_token_key_starting_with_a_dash_starts_the_agent() -> Result<()> {
    let key = std::iter::repeat_with(TokenSigner::generate)
        .take(10_000)
        .filter_map(Result::ok)
        .map(|s| s.verifier().to_base64())
        .find(|k| k.starts_with('-'))
        .context("no key starting with '-' in 10000 tries")?;
    let dir = tempfile::TempDir::new()?;
    let backend = ProcessBackend::new(
        dir.path().join("sandboxes"),
        dir.path().join("listen"),
        bin_path("warren-agent"),
    )?;
    let id = SandboxId::generate();
    backend
        .create(&id, &key, &[], &SandboxSpec::default())
        .await?;
    ensure!(
        backend.agent_socket(&id).await.is_some(),
        "the agent is not running"
    );
    backend.delete(&id).await?;
    Ok(())
}
