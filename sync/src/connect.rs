//! One SSH connection to a sandbox through the gateway's front door (relay mode:
//! the login name is the sandbox id), and what sync needs from it: an SFTP session
//! and exec channels for the agent's helper subcommands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::PublicKey;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::rawsession::Limits;

use crate::Secret;
use crate::error::SyncError;
use crate::remote::Sftp;

/// How to log in: what `ssh <id>@gateway` accepts.
#[derive(Clone, Debug)]
pub enum Credential {
    /// An API key or a sandbox token, sent as the password.
    Password(Secret),
    /// An OpenSSH private key registered to the account (unencrypted).
    KeyFile(PathBuf),
}

/// Where a sandbox is reached: the gateway's SSH address, the sandbox, the login.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub sandbox: String,
    pub credential: Credential,
    /// The gateway's host keys (`GET /v1/host-keys`); at least one, or the
    /// connection is refused before it is made.
    pub host_keys: Vec<PublicKey>,
}

struct Pinned(Vec<PublicKey>);

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // The gateway presents plain host keys; a certificate is not one of them.
            return Ok(false);
        };
        Ok(self.0.iter().any(|k| k.key_data() == key.key_data()))
    }
}

/// A logged-in connection; channels are opened on it as needed.
pub struct Connection {
    handle: client::Handle<Pinned>,
}

/// What a finished exec printed and how it ended.
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<u32>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Ciphers, AES-GCM first: with AES-NI (any x86-64 server of the last decade) it
/// costs a fraction of ChaCha20-Poly1305, russh's first choice, which was an eighth
/// of the machine's CPU time in a 1 GiB seed (our side and the gateway's).
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
];

/// Most a helper run with [`Connection::exec`] may print: its answer (chunk
/// hashes: 65 bytes per MiB of the files asked about) and its error output.
const MAX_EXEC_STDOUT: usize = 64 << 20;
const MAX_EXEC_STDERR: usize = 16 << 10;

/// Seconds an SFTP request may take before the session is taken for dead.
const SFTP_TIMEOUT_S: u64 = 120;

impl Connection {
    pub async fn open(endpoint: &Endpoint) -> Result<Connection, SyncError> {
        // An empty list would take any server for the gateway: refuse it here rather
        // than trust whoever answers.
        if endpoint.host_keys.is_empty() {
            return Err(SyncError::NoHostKey(endpoint.host.clone()));
        }
        let config = Arc::new(client::Config {
            preferred: russh::Preferred {
                cipher: CIPHERS.into(),
                ..russh::Preferred::default()
            },
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_max: 3,
            inactivity_timeout: None,
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65536,
            nodelay: true,
            ..client::Config::default()
        });
        let login = async {
            let addr = (endpoint.host.as_str(), endpoint.port);
            let mut handle =
                client::connect(config, addr, Pinned(endpoint.host_keys.clone())).await?;
            let auth = match &endpoint.credential {
                Credential::Password(secret) => {
                    handle
                        .authenticate_password(&endpoint.sandbox, secret.expose())
                        .await?
                }
                Credential::KeyFile(path) => {
                    let key = russh::keys::load_secret_key(path, None)
                        .map_err(|e| SyncError::Key(path.clone(), e.to_string()))?;
                    let hash = handle.best_supported_rsa_hash().await?.flatten();
                    handle
                        .authenticate_publickey(
                            &endpoint.sandbox,
                            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                        )
                        .await?
                }
            };
            if !auth.success() {
                return Err(SyncError::Refused(endpoint.sandbox.clone()));
            }
            Ok(Connection { handle })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, login)
            .await
            .map_err(|_| SyncError::Timeout("logging in"))?
    }

    /// A new SFTP session (its own channel), initialised, with the server's limits.
    pub async fn sftp(&self) -> Result<Sftp, SyncError> {
        let channel = self.handle.channel_open_session().await?;
        channel.request_subsystem(true, "sftp").await?;
        let mut raw = RawSftpSession::new(channel.into_stream());
        raw.set_timeout(SFTP_TIMEOUT_S);
        raw.init().await?;
        // 32 KiB is what every SFTP server must take; the agent says 255 KiB.
        let mut write_len = 32 * 1024;
        if let Ok(limits) = raw.limits().await {
            if limits.max_write_len > 0 {
                write_len = limits.max_write_len.min(1024 * 1024) as usize;
            }
            raw.set_limits(Limits::from(limits));
        }
        Ok(Sftp::new(raw, write_len))
    }

    /// Runs `command` in the sandbox, feeding it `stdin`, and collects its output.
    pub async fn exec(&self, command: &str, stdin: &[u8]) -> Result<ExecOutput, SyncError> {
        let mut channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        if !stdin.is_empty() {
            channel.data(stdin).await?;
        }
        channel.eof().await?;
        let mut out = ExecOutput {
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
        };
        while let Some(msg) = channel.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => {
                    if out.stdout.len() + data.len() > MAX_EXEC_STDOUT {
                        return Err(SyncError::TooLarge {
                            what: "a helper's answer",
                            limit: MAX_EXEC_STDOUT,
                        });
                    }
                    out.stdout.extend_from_slice(&data);
                }
                russh::ChannelMsg::ExtendedData { data, .. } => {
                    // Only for a message: the first few KiB are plenty.
                    let room = MAX_EXEC_STDERR.saturating_sub(out.stderr.len());
                    out.stderr.extend_from_slice(&data[..data.len().min(room)]);
                }
                russh::ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Starts `command` and hands back its channel, for a long-running helper (the
    /// watcher) whose output is read as it comes.
    pub async fn exec_channel(
        &self,
        command: &str,
    ) -> Result<russh::Channel<client::Msg>, SyncError> {
        let channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        Ok(channel)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}
