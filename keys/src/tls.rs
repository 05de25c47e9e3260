//! The HTTP API's TLS identity: a certificate chain and its private key, either the
//! operator's (PEM files) or a self-signed one made on first start and kept in the
//! data directory (`tls.crt`, `tls.key` with mode 0600).
//!
//! The self-signed certificate is ECDSA P-256 (rcgen on ring) with the SANs
//! `localhost`, `127.0.0.1`, `::1` and any names the caller adds; clients trust it
//! with `curl --cacert tls.crt` or by its SHA-256 fingerprint, which
//! [`TlsIdentity::fingerprint`] gives as OpenSSL prints it
//! (`openssl x509 -noout -fingerprint -sha256`).
//!
//! Not for: serving connections (the gateway's `api::tls` does that with the
//! [`rustls::ServerConfig`] built here).

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::private_file::{self, FileError};

/// The generated certificate's file name in the data directory.
pub const TLS_CERT_FILE: &str = "tls.crt";
/// The generated private key's file name in the data directory (mode 0600).
pub const TLS_KEY_FILE: &str = "tls.key";

/// What the self-signed certificate always names.
const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TLS key {} is too open (mode {mode:04o}); run chmod 600", path.display())]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error(
        "{} exists without {}; remove it to have a new self-signed certificate made",
        present.display(),
        missing.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("{name:?} is neither a DNS name nor an IP address")]
    BadName { name: String },
    #[error("could not make the self-signed certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the certificate and key cannot serve TLS (do they belong together?): {0}")]
    Unusable(#[source] rustls::Error),
}

impl From<FileError> for TlsError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => TlsError::Io { path, source },
            FileError::InsecurePermissions { path, mode } => {
                TlsError::InsecurePermissions { path, mode }
            }
        }
    }
}

/// A certificate chain (leaf first) and its private key, checked to belong together.
pub struct TlsIdentity {
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
    cert_path: PathBuf,
    generated: bool,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.cert_chain.len())
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The private key (DER). Secret: never log it.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// SHA-256 of the leaf certificate (DER), as OpenSSL prints it:
    /// upper-case hex pairs joined by colons.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The PEM file the certificate came from (for `curl --cacert` when self-signed).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Whether this call made the certificate (first start).
    pub fn generated(&self) -> bool {
        self.generated
    }

    /// A rustls server configuration serving this identity: TLS 1.3 and 1.2, ring,
    /// no client certificates, ALPN `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

/// Loads `tls.crt` and `tls.key` from `dir`, or, if neither exists, makes a
/// self-signed certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`
/// (DNS names or IP addresses) and writes both (the key with mode 0600, the
/// directory created 0700 if missing). An existing key must not be accessible by
/// group or others. `extra_names` only matter when a certificate is made: to add
/// names later, remove both files.
pub fn load_or_generate_tls_identity(
    dir: &Path,
    extra_names: &[String],
) -> Result<TlsIdentity, TlsError> {
    let cert_path = dir.join(TLS_CERT_FILE);
    let key_path = dir.join(TLS_KEY_FILE);
    if let Some(key) = private_file::read_private(&key_path)? {
        return load_generated(&cert_path, &key_path, &key);
    }
    if cert_path.exists() {
        return Err(TlsError::Incomplete {
            present: cert_path,
            missing: key_path,
        });
    }

    let (cert_pem, key_pem) = self_signed(extra_names)?;
    // The key first: a certificate alone is never a state another process sees
    // while this one is writing, so the check above stays an error.
    if !private_file::create_private(&key_path, key_pem.as_bytes())? {
        // Another process made its key at the same moment: wait for its certificate.
        let key = private_file::read_private(&key_path)?.unwrap_or_default();
        return load_generated(&cert_path, &key_path, &key);
    }
    if !private_file::create_private(&cert_path, cert_pem.as_bytes())? {
        return load_generated(&cert_path, &key_path, key_pem.as_bytes());
    }
    // The certificate is public; readable by all like any other.
    let _ = std::fs::set_permissions(&cert_path, std::fs::Permissions::from_mode(0o644));
    let mut identity = identity(
        &cert_path,
        cert_pem.as_bytes(),
        &key_path,
        key_pem.as_bytes(),
    )?;
    identity.generated = true;
    Ok(identity)
}

/// Loads an operator's certificate chain (PEM, leaf first) and private key (PEM:
/// PKCS#8, PKCS#1 or SEC1), checking that they belong together. The key file must
/// not be accessible by others (group-readable is allowed, as with Debian's
/// `ssl-cert` group).
pub fn load_tls_identity(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, TlsError> {
    let key = read_key_file(key_path)?;
    let cert = read(cert_path)?;
    identity(cert_path, &cert, key_path, &key)
}

/// A generated pair's key is read; its certificate may still be on its way from
/// another process that is making it (a moment at most).
fn load_generated(cert_path: &Path, key_path: &Path, key: &[u8]) -> Result<TlsIdentity, TlsError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::read(cert_path) {
            Ok(cert) => return identity(cert_path, &cert, key_path, key),
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TlsError::Incomplete {
                    present: key_path.to_owned(),
                    missing: cert_path.to_owned(),
                });
            }
            Err(source) => {
                return Err(TlsError::Io {
                    path: cert_path.to_owned(),
                    source,
                });
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// An operator's key file: refused if others can access it.
fn read_key_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let io_error = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mode = file.metadata().map_err(io_error)?.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(TlsError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut contents = Vec::new();
    io::Read::read_to_end(&mut &file, &mut contents).map_err(io_error)?;
    Ok(contents)
}

fn identity(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<TlsIdentity, TlsError> {
    let cert_chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_path.to_owned(),
            source,
        })?;
    let Some(leaf) = cert_chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let fingerprint = sha256_fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_path.to_owned(),
        },
        source => TlsError::Pem {
            path: key_path.to_owned(),
            source,
        },
    })?;
    let config = server_config(cert_chain.clone(), key.clone_key())?;
    Ok(TlsIdentity {
        cert_chain,
        key,
        fingerprint,
        cert_path: cert_path.to_owned(),
        generated: false,
        config,
    })
}

/// Builds the server configuration; this is also the check that the key parses
/// and matches the leaf certificate.
fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Unusable)?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(TlsError::Unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A new self-signed certificate and its key, both PEM.
fn self_signed(extra_names: &[String]) -> Result<(String, String), TlsError> {
    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in extra_names {
        let name = name.trim().trim_start_matches('[').trim_end_matches(']');
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }
    for name in &names {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(TlsError::BadName { name: name.clone() });
        }
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(TlsError::Generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Warren gateway (self-signed)");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `AB:CD:…`, SHA-256 over the certificate's DER.
fn sha256_fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generates_once_then_loads_the_same() {
        let dir = TestDir::new();
        let data = dir.path().join("data");
        let first = load_or_generate_tls_identity(&data, &["gw.example.com".into()]).unwrap();
        assert!(first.generated());
        assert_eq!(mode(&data.join(TLS_KEY_FILE)), 0o600);
        assert_eq!(mode(&data.join(TLS_CERT_FILE)), 0o644);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(first.cert_path(), data.join(TLS_CERT_FILE));
        assert_eq!(first.cert_chain().len(), 1);

        let second = load_or_generate_tls_identity(&data, &[]).unwrap();
        assert!(!second.generated());
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.cert_chain(), second.cert_chain());
        assert_eq!(
            first.key().secret_der(),
            second.key().secret_der(),
            "the same key"
        );
    }

    #[test]
    fn fingerprint_is_openssl_style_sha256_of_the_der() {
        let dir = TestDir::new();
        let id = load_or_generate_tls_identity(dir.path(), &[]).unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
        assert!(fp.split(':').all(|pair| {
            pair.len() == 2
                && pair
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        }));
        let digest = ring::digest::digest(&ring::digest::SHA256, id.cert_chain()[0].as_ref());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(fp.replace(':', ""), hex);
    }

    #[test]
    fn certificate_names_localhost_loopbacks_and_extras() {
        let dir = TestDir::new();
        let id = load_or_generate_tls_identity(
            dir.path(),
            &[
                "gw.example.com".into(),
                "10.1.2.3".into(),
                "[fd00::1]".into(),
            ],
        )
        .unwrap();
        let der = id.cert_chain()[0].as_ref();
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"localhost"));
        assert!(has(b"gw.example.com"));
        assert!(has(&[127, 0, 0, 1]), "127.0.0.1 as an IP SAN");
        assert!(has(&[10, 1, 2, 3]), "10.1.2.3 as an IP SAN");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(has(&v6), "::1 as an IP SAN");
        v6[0] = 0xfd;
        assert!(has(&v6), "fd00::1 as an IP SAN");
    }

    #[test]
    fn bad_extra_name_is_refused_and_writes_nothing() {
        let dir = TestDir::new();
        let err = load_or_generate_tls_identity(dir.path(), &["bad name!".into()]).unwrap_err();
        assert!(matches!(err, TlsError::BadName { .. }), "{err}");
        assert!(!dir.path().join(TLS_KEY_FILE).exists());
        assert!(!dir.path().join(TLS_CERT_FILE).exists());
    }

    #[test]
    fn refuses_a_key_others_can_read() {
        let dir = TestDir::new();
        load_or_generate_tls_identity(dir.path(), &[]).unwrap();
        let key = dir.path().join(TLS_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_generate_tls_identity(dir.path(), &[]).unwrap_err();
        assert!(
            matches!(err, TlsError::InsecurePermissions { mode: 0o640, .. }),
            "{err}"
        );
        // An operator's key may be group-readable, not world-readable.
        let cert = dir.path().join(TLS_CERT_FILE);
        load_tls_identity(&cert, &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_tls_identity(&cert, &key).unwrap_err();
        assert!(
            matches!(err, TlsError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_without_its_key_is_an_error_not_a_new_pair() {
        let dir = TestDir::new();
        load_or_generate_tls_identity(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join(TLS_KEY_FILE)).unwrap();
        let err = load_or_generate_tls_identity(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn operator_files_load_and_a_mismatched_key_is_refused() {
        let a = TestDir::new();
        let b = TestDir::new();
        let ida = load_or_generate_tls_identity(a.path(), &[]).unwrap();
        load_or_generate_tls_identity(b.path(), &[]).unwrap();
        let loaded =
            load_tls_identity(&a.path().join(TLS_CERT_FILE), &a.path().join(TLS_KEY_FILE)).unwrap();
        assert_eq!(loaded.fingerprint(), ida.fingerprint());
        assert!(!loaded.generated());

        let err = load_tls_identity(&a.path().join(TLS_CERT_FILE), &b.path().join(TLS_KEY_FILE))
            .unwrap_err();
        assert!(matches!(err, TlsError::Unusable(_)), "{err}");
    }

    #[test]
    fn garbage_files_give_typed_errors() {
        let dir = TestDir::new();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not pem at all\n").unwrap();
        std::fs::write(&key, "neither\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_tls_identity(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

        load_or_generate_tls_identity(dir.path(), &[]).unwrap();
        let err = load_tls_identity(&dir.path().join(TLS_CERT_FILE), &key).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");

        // A certificate where the key should be.
        std::fs::copy(dir.path().join(TLS_CERT_FILE), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_tls_identity(&dir.path().join(TLS_CERT_FILE), &key).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");

        let missing = load_tls_identity(&dir.path().join("nope"), &key).unwrap_err();
        assert!(matches!(missing, TlsError::Io { .. }), "{missing}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let dir = TestDir::new();
        let id = load_or_generate_tls_identity(dir.path(), &[]).unwrap();
        let key_pem = std::fs::read_to_string(dir.path().join(TLS_KEY_FILE)).unwrap();
        let body: String = key_pem.lines().nth(1).unwrap().chars().take(20).collect();
        let debug = format!("{id:?}");
        assert!(!debug.contains(&body));
        assert!(debug.contains(id.fingerprint()));
    }
}
