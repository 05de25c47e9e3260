//! The gateway's SSH front door, end to end: the real OpenSSH clients log in to the
//! gateway with a sandbox id as user name and reach a real agent behind it. The
//! shared scenarios (also run against the agent and against sshd) must all hold
//! through the relay; then what only the gateway has: authorization, tokens, jump
//! mode, "runner offline".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use warren_keys::{Claims, SandboxId, Scope, TokenSigner};
use warren_tests::stack::DirectGateway;
use warren_tests::{Agent, Client, scenarios};

/// A gateway, an agent trusting its tokens, an account owning that sandbox, and a
/// client with the account's key, logging in as the sandbox.
struct Setup {
    gateway: DirectGateway,
    agent: Agent,
    client: Client,
    dir: String,
}

fn setup() -> Result<Setup> {
    let gateway = DirectGateway::start()?;
    let agent = Agent::builder()
        .signer_file(gateway.signer_file())
        .start()?;
    let id = agent.sandbox_id().clone();
    let client = Client::new(gateway.target(id.as_str()))?;
    let owner = gateway.user_with_key("alice", &client)?;
    let addr: SocketAddr = agent.listen_addr().parse()?;
    gateway.sandbox(&id, &owner, Some(addr))?;
    let dir = agent.workdir().to_string_lossy().into_owned();
    Ok(Setup {
        gateway,
        agent,
        client,
        dir,
    })
}

macro_rules! through_gateway {
    ($name:ident, |$c:ident, $dir:ident| $body:expr) => {
        #[test]
        fn $name() -> Result<()> {
            let Setup {
                gateway: _g,
                agent: _a,
                client: $c,
                dir: $dir,
            } = setup()?;
            let _ = &$dir;
            $body
        }
    };
}

through_gateway!(exec_exit_codes, |c, dir| scenarios::exec_exit_codes(&c));
through_gateway!(stdout_and_stderr, |c, dir| {
    scenarios::stdout_stderr_separation(&c)
});
through_gateway!(binary_stdin, |c, dir| scenarios::binary_stdin_roundtrip(&c));
through_gateway!(tar_round_trip, |c, dir| scenarios::tar_roundtrip(&c, &dir));
through_gateway!(exit_signal, |c, dir| scenarios::exit_signal(&c));
through_gateway!(pty_shell, |c, dir| scenarios::pty_shell(&c));
through_gateway!(pty_exec, |c, dir| scenarios::pty_exec(&c));
through_gateway!(scp_100mb_both_ways, |c, dir| scenarios::scp_both_ways(
    &c,
    &dir,
    100 << 20
));
through_gateway!(sftp_100mb_both_ways, |c, dir| scenarios::sftp_both_ways(
    &c,
    &dir,
    100 << 20
));
through_gateway!(sftp_batch, |c, dir| scenarios::sftp_batch_ops(&c, &dir));
through_gateway!(rsync_both_ways, |c, dir| scenarios::rsync_both_ways(
    &c, &dir
));
through_gateway!(local_forward, |c, dir| scenarios::local_forward(&c));
through_gateway!(remote_forward, |c, dir| {
    scenarios::remote_forward_and_cancel(&c)
});
through_gateway!(agent_forwarding, |c, dir| scenarios::agent_forwarding(&c));
through_gateway!(x11_refused, |c, dir| scenarios::x11_refused(&c));
through_gateway!(keepalive, |c, dir| scenarios::keepalive(&c));
through_gateway!(vscode_style_background_job, |c, dir| {
    scenarios::background_survives_channel_close(&c, &dir)
});

fn refused(c: &Client, what: &str) -> Result<()> {
    let out = c.exec("echo in").run()?;
    ensure!(
        out.code() == Some(255) && out.stdout_str().is_empty(),
        "{what}: expected a refusal, got:\n{out}"
    );
    Ok(())
}

#[test]
fn another_users_key_cannot_reach_the_sandbox() -> Result<()> {
    let s = setup()?;
    let mallory = Client::new(s.gateway.target(s.agent.sandbox_id().as_str()))?;
    s.gateway.user_with_key("mallory", &mallory)?;
    refused(&mallory, "someone else's sandbox")?;
    // An unknown sandbox looks exactly the same.
    let unknown = mallory.with_target(s.gateway.target("sbx-doesnotexist"));
    refused(&unknown, "unknown sandbox")
}

#[test]
fn sandbox_tokens_log_in_and_bad_ones_do_not() -> Result<()> {
    let s = setup()?;
    let id = s.agent.sandbox_id().clone();
    let signer = TokenSigner::load_or_generate(&s.gateway.signer_file())?;
    let token = signer.mint(&id, Scope::Ssh, Duration::from_secs(300));

    let by_password = Client::new(s.gateway.target(id.as_str()))?.with_password(token.expose())?;
    let out = by_password.exec("echo by-token").run()?.success()?;
    ensure!(out.stdout_str() == "by-token\n", "{out}");

    let in_name = format!("{}#{}", id, token.expose());
    let by_name = Client::new(s.gateway.target(&in_name))?;
    let out = by_name.exec("echo no-prompt").run()?.success()?;
    ensure!(out.stdout_str() == "no-prompt\n", "{out}");

    let other = signer.mint(&SandboxId::generate(), Scope::Ssh, Duration::from_secs(300));
    refused(
        &Client::new(s.gateway.target(id.as_str()))?.with_password(other.expose())?,
        "token for another sandbox",
    )?;
    let expired = signer.mint_claims(&Claims {
        sandbox: id.clone(),
        scope: Scope::Ssh,
        expires_at: 1,
        nonce: [7; 16],
    });
    refused(
        &Client::new(s.gateway.target(id.as_str()))?.with_password(expired.expose())?,
        "expired token",
    )?;
    let forged = TokenSigner::generate()?.mint(&id, Scope::Ssh, Duration::from_secs(300));
    refused(
        &Client::new(s.gateway.target(id.as_str()))?.with_password(forged.expose())?,
        "token from another signer",
    )
}

#[test]
fn an_unreachable_runner_is_reported_not_hung() -> Result<()> {
    let gateway = DirectGateway::start()?;
    let id = SandboxId::generate();
    let client = Client::new(gateway.target(id.as_str()))?;
    let owner = gateway.user_with_key("alice", &client)?;
    gateway.sandbox(&id, &owner, None)?;
    let started = std::time::Instant::now();
    let out = client.exec("true").run()?;
    ensure!(
        out.code() == Some(255) && out.stderr_str().contains("runner offline"),
        "expected 'runner offline':\n{out}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn jump_mode_reaches_the_agent_end_to_end() -> Result<()> {
    let s = setup()?;
    // The agent authenticates the user's own key in jump mode.
    s.agent.authorize(s.client.public_key())?;
    let id = s.agent.sandbox_id().clone();
    // What `-J` does, spelled as a ProxyCommand so the hop gets our throwaway options.
    let hop = format!(
        "ProxyCommand=ssh -F /dev/null -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no \
         -o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -i {} -p {} -W %h:%p alice@127.0.0.1",
        s.client.key_path().display(),
        s.gateway.port
    );
    let jumped = s
        .client
        .with_target(warren_tests::Target::new(id.as_str(), 22, id.as_str()));
    let out = jumped
        .ssh(&["-o", &hop], "echo end-to-end")
        .run()?
        .success()?;
    ensure!(out.stdout_str() == "end-to-end\n", "{out}");
    Ok(())
}
