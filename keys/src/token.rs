//! Sandbox tokens: short-lived credentials the gateway signs and a sandbox's agent
//! verifies offline with the gateway's public key. They travel as an SSH password.
//!
//! Format: `wst1.` + base64url-no-pad(payload || Ed25519 signature), where
//!
//! ```text
//! payload   = version u8 (1) | scope u8 | expires_at u64 BE (unix seconds)
//!           | nonce [16] | sandbox id length u8 | sandbox id bytes
//! signature = Ed25519("warren-sandbox-token-v1\0" || payload)   (64 bytes)
//! ```
//!
//! The prefix lets people and secret scanners recognise a token; the version byte is
//! signed, so a future layout can never be read as this one; the domain string keeps
//! a token signature from meaning anything else, whatever the key is reused for.
//!
//! Not for: deciding what a user may do. The gateway checks that before minting; the
//! agent only checks the token is genuine, current and for its own sandbox.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use thiserror::Error;

use crate::ids::SandboxId;
use crate::private_file::{self, FileError};
use crate::random::random_bytes;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "wst1.";
/// Longer input is refused before any decoding. Real tokens are at most 211 bytes.
pub const MAX_TOKEN_LEN: usize = 512;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"warren-sandbox-token-v1\0";
const NONCE_LEN: usize = 16;
const SIGNATURE_LEN: usize = 64;
const PUBLIC_KEY_LEN: usize = 32;

/// What a client asking for `ssh -A` is told (on the session's stderr: OpenSSH asks
/// without wanting a reply) when its login may not forward, by the gateway in relay
/// mode and by the agent in jump mode.
pub const AGENT_FORWARDING_REFUSED: &str = "warren: agent forwarding is off for this \
     sandbox (only its owner can turn it on, at create: forward_agent)\r\n";

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Shell, exec, SFTP and forwarding in one sandbox.
    Ssh,
    /// The same, but sessions do not get the sandbox's create-time environment
    /// (its secrets): what a user the sandbox is shared with gets by default.
    SshWithoutSecrets,
    /// [`Scope::Ssh`], and the sessions may forward the client's SSH agent (`ssh -A`):
    /// only what the gateway gives a sandbox's owner when the sandbox has
    /// `forward_agent`. The other scopes never forward.
    SshWithAgent,
}

impl Scope {
    fn to_byte(self) -> u8 {
        match self {
            Scope::Ssh => 1,
            Scope::SshWithoutSecrets => 2,
            Scope::SshWithAgent => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Scope> {
        // 0 is deliberately unassigned, so zeroed bytes never grant anything.
        match b {
            1 => Some(Scope::Ssh),
            2 => Some(Scope::SshWithoutSecrets),
            3 => Some(Scope::SshWithAgent),
            _ => None,
        }
    }
}

/// What a token says, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sandbox: SandboxId,
    pub scope: Scope,
    /// Unix seconds; the token is valid strictly before this instant.
    pub expires_at: u64,
    /// Makes every token unique, so two mints never yield the same string.
    pub nonce: [u8; NONCE_LEN],
}

/// A signed token. A secret: `Debug` and `Display` print `<redacted>`.
#[derive(Clone)]
pub struct SandboxToken(String);

impl SandboxToken {
    /// The token text, for sending as the SSH password. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SandboxToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SandboxToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SandboxToken {
    fn from(s: String) -> Self {
        SandboxToken(s)
    }
}

impl FromStr for SandboxToken {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SandboxToken(s.to_owned()))
    }
}

/// Token minting and verification errors. Messages never contain token text.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("sandbox token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("malformed sandbox token: {0}")]
    Malformed(&'static str),
    #[error("sandbox token version {0} is not supported")]
    UnknownVersion(u8),
    #[error("sandbox token has unknown scope {0}")]
    UnknownScope(u8),
    #[error("sandbox token signature is invalid")]
    BadSignature,
    #[error("sandbox token is for another sandbox")]
    WrongSandbox,
    #[error("sandbox token has expired")]
    Expired,
    #[error("token key {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token key {} is accessible by group or others (mode {mode:04o}); run chmod 600",
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("invalid token key: {0}")]
    Key(String),
}

impl From<FileError> for TokenError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => TokenError::Io { path, source },
            FileError::InsecurePermissions { path, mode } => {
                TokenError::InsecurePermissions { path, mode }
            }
        }
    }
}

/// The gateway's token signing key (Ed25519).
pub struct TokenSigner {
    key_pair: Ed25519KeyPair,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("public_key", &self.verifier().to_base64())
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh key that lives only in memory.
    pub fn generate() -> Result<TokenSigner, TokenError> {
        let pkcs8 = generate_pkcs8()?;
        Self::from_pkcs8(pkcs8.as_ref()).map_err(|e| TokenError::Key(e.to_string()))
    }

    /// Loads the PKCS#8 key at `path`, or generates one and persists it with mode 0600.
    /// Existing files must not be accessible by group or others.
    pub fn load_or_generate(path: &Path) -> Result<TokenSigner, TokenError> {
        let load = |der: &[u8]| {
            Self::from_pkcs8(der).map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))
        };
        if let Some(der) = private_file::read_private(path)? {
            return load(&der);
        }
        let pkcs8 = generate_pkcs8()?;
        if private_file::create_private(path, pkcs8.as_ref())? {
            return load(pkcs8.as_ref());
        }
        // Another process created the key first; use theirs so we agree.
        match private_file::read_private(path)? {
            Some(der) => load(&der),
            None => Err(TokenError::Io {
                path: path.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }

    /// A fresh key as PKCS#8 DER (to be sealed for a gateway tier's store).
    pub fn generate_pkcs8_der() -> Result<Vec<u8>, TokenError> {
        Ok(generate_pkcs8()?.as_ref().to_vec())
    }

    /// The key in PKCS#8 DER `der` (as [`TokenSigner::generate_pkcs8_der`] made it).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<TokenSigner, TokenError> {
        Self::from_pkcs8(der).map_err(|e| TokenError::Key(e.to_string()))
    }

    fn from_pkcs8(der: &[u8]) -> Result<TokenSigner, ring::error::KeyRejected> {
        Ok(TokenSigner {
            key_pair: Ed25519KeyPair::from_pkcs8(der)?,
        })
    }

    /// The public half, for agents.
    pub fn verifier(&self) -> TokenVerifier {
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        // An Ed25519 public key is always 32 bytes; zip copies without a length panic.
        for (dst, src) in public_key
            .iter_mut()
            .zip(self.key_pair.public_key().as_ref())
        {
            *dst = *src;
        }
        TokenVerifier { public_key }
    }

    /// A token for `sandbox` valid for `ttl` from now, with a fresh random nonce.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub fn mint(&self, sandbox: &SandboxId, scope: Scope, ttl: Duration) -> SandboxToken {
        self.mint_claims(&Claims {
            sandbox: sandbox.clone(),
            scope,
            expires_at: unix_seconds(SystemTime::now()).saturating_add(ttl.as_secs()),
            nonce: random_bytes(),
        })
    }

    /// A token carrying exactly `claims` (tests use it for already-expired tokens).
    pub fn mint_claims(&self, claims: &Claims) -> SandboxToken {
        let mut bytes = encode_payload(claims);
        let signature = self.key_pair.sign(&signed_message(&bytes));
        bytes.extend_from_slice(signature.as_ref());
        SandboxToken(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)))
    }
}

/// The gateway's public key, as held by agents. Not secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenVerifier {
    public_key: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenVerifier({})", self.to_base64())
    }
}

/// Prints [`TokenVerifier::to_base64`].
impl fmt::Display for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl FromStr for TokenVerifier {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenVerifier::from_base64(s)
    }
}

impl TokenVerifier {
    /// From the 32 raw bytes of an Ed25519 public key.
    pub fn from_bytes(b: &[u8]) -> Result<TokenVerifier, TokenError> {
        let public_key = b
            .try_into()
            .map_err(|_| TokenError::Key(format!("public key must be {PUBLIC_KEY_LEN} bytes")))?;
        Ok(TokenVerifier { public_key })
    }

    /// The raw public key, base64url without padding (43 characters).
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_key)
    }

    /// Parses [`TokenVerifier::to_base64`]'s output; surrounding whitespace (a newline
    /// at the end of a file) is ignored.
    pub fn from_base64(s: &str) -> Result<TokenVerifier, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| TokenError::Key("public key is not base64url without padding".into()))?;
        Self::from_bytes(&bytes)
    }

    /// Checks `token` is genuine, for `expected`, and unexpired at `now`.
    ///
    /// Total: any input yields `Ok` or a typed error, never a panic. Checks run in the
    /// order length, prefix, base64, structure, signature, sandbox, expiry, so nothing
    /// is parsed before its size is bounded and nothing is trusted before it is signed.
    pub fn verify(
        &self,
        token: &str,
        expected: &SandboxId,
        now: SystemTime,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let encoded = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed("missing wst1. prefix"))?;
        // The engine rejects padding and non-zero trailing bits, so each byte string has
        // exactly one encoding and an altered character can never verify.
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::Malformed("not base64url without padding"))?;
        let (payload, signature) = bytes
            .split_last_chunk::<SIGNATURE_LEN>()
            .ok_or(TokenError::Malformed("too short"))?;
        let claims = decode_payload(payload)?;
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed_message(payload), signature)
            .map_err(|_| TokenError::BadSignature)?;
        if claims.sandbox != *expected {
            return Err(TokenError::WrongSandbox);
        }
        if unix_seconds(now) >= claims.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn generate_pkcs8() -> Result<ring::pkcs8::Document, TokenError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| TokenError::Key("could not generate a key: OS random failed".into()))
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    [DOMAIN, payload].concat()
}

fn encode_payload(claims: &Claims) -> Vec<u8> {
    let id = claims.sandbox.as_str().as_bytes();
    let mut out = Vec::with_capacity(1 + 1 + 8 + NONCE_LEN + 1 + id.len() + SIGNATURE_LEN);
    out.push(VERSION);
    out.push(claims.scope.to_byte());
    out.extend_from_slice(&claims.expires_at.to_be_bytes());
    out.extend_from_slice(&claims.nonce);
    // SandboxId guarantees at most 63 bytes, so the length fits a u8.
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out
}

fn decode_payload(payload: &[u8]) -> Result<Claims, TokenError> {
    let mut r = Reader(payload);
    let [version] = r.array()?;
    if version != VERSION {
        return Err(TokenError::UnknownVersion(version));
    }
    let [scope] = r.array()?;
    let scope = Scope::from_byte(scope).ok_or(TokenError::UnknownScope(scope))?;
    let expires_at = u64::from_be_bytes(r.array()?);
    let nonce = r.array()?;
    let [id_len] = r.array()?;
    let id = r.take(usize::from(id_len))?;
    if !r.0.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    let sandbox = std::str::from_utf8(id)
        .ok()
        .and_then(|id| SandboxId::parse(id).ok())
        .ok_or(TokenError::Malformed("invalid sandbox id"))?;
    Ok(Claims {
        sandbox,
        scope,
        expires_at,
        nonce,
    })
}

/// Reads from the front of a byte slice; running out is `Malformed`, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(TokenError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(TokenError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests;
