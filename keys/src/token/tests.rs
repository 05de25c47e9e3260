#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::LazyLock;

use proptest::prelude::*;

use super::*;
use crate::test_dir::TestDir;

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SandboxId {
    SandboxId::parse(s).unwrap()
}

/// A token with an arbitrary (possibly invalid) payload, correctly signed by `signer`,
/// to reach the checks that come after the signature.
fn forge(signer: &TokenSigner, payload: &[u8]) -> String {
    let signature = signer.key_pair.sign(&signed_message(payload));
    let bytes = [payload, signature.as_ref()].concat();
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn decoded(token: &SandboxToken) -> Vec<u8> {
    let encoded = token.expose().strip_prefix(TOKEN_PREFIX).unwrap();
    URL_SAFE_NO_PAD.decode(encoded).unwrap()
}

fn claims(sandbox: &str, expires_at: u64) -> Claims {
    Claims {
        sandbox: id(sandbox),
        scope: Scope::Ssh,
        expires_at,
        nonce: [9; NONCE_LEN],
    }
}

#[test]
fn round_trip() {
    let signer = TokenSigner::generate().unwrap();
    let sandbox = id("sbx-abc123");
    let token = signer.mint(&sandbox, Scope::Ssh, HOUR);
    assert!(token.expose().starts_with(TOKEN_PREFIX));
    let got = signer
        .verifier()
        .verify(token.expose(), &sandbox, SystemTime::now())
        .unwrap();
    assert_eq!(got.sandbox, sandbox);
    assert_eq!(got.scope, Scope::Ssh);
    let now = unix_seconds(SystemTime::now());
    assert!(got.expires_at > now + 3500 && got.expires_at <= now + 3600);

    // Nonces make every mint unique.
    let again = signer.mint(&sandbox, Scope::Ssh, HOUR);
    assert_ne!(token.expose(), again.expose());
}

#[test]
fn longest_token_fits_the_limit() {
    let signer = TokenSigner::generate().unwrap();
    let c = claims(&"a".repeat(63), u64::MAX);
    let token = signer.mint_claims(&c);
    assert_eq!(token.expose().len(), 211);
    let got = signer
        .verifier()
        .verify(token.expose(), &c.sandbox, SystemTime::now())
        .unwrap();
    assert_eq!(got, c);
}

#[test]
fn wrong_sandbox() {
    let signer = TokenSigner::generate().unwrap();
    let token = signer.mint(&id("sbx-one"), Scope::Ssh, HOUR);
    let err = signer
        .verifier()
        .verify(token.expose(), &id("sbx-two"), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, TokenError::WrongSandbox), "{err:?}");
}

#[test]
fn expired() {
    let signer = TokenSigner::generate().unwrap();
    let verifier = signer.verifier();
    let sandbox = id("sbx-old");
    let token = signer.mint_claims(&claims("sbx-old", 1_000));
    let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
    assert!(verifier.verify(token.expose(), &sandbox, at(999)).is_ok());
    for secs in [1_000, 1_001] {
        let err = verifier
            .verify(token.expose(), &sandbox, at(secs))
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{err:?}");
    }
    let err = verifier
        .verify(token.expose(), &sandbox, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, TokenError::Expired), "{err:?}");

    let zero_ttl = signer.mint(&sandbox, Scope::Ssh, Duration::ZERO);
    let err = verifier
        .verify(zero_ttl.expose(), &sandbox, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, TokenError::Expired), "{err:?}");
}

#[test]
fn tampered_payload_or_signature_fails() {
    let signer = TokenSigner::generate().unwrap();
    let sandbox = id("sbx-abc");
    let token = signer.mint(&sandbox, Scope::Ssh, HOUR);
    let bytes = decoded(&token);
    // 2..10 is expires_at, 10..26 the nonce: altering either keeps the structure valid.
    for index in [2, 9, 10, 25, bytes.len() - SIGNATURE_LEN, bytes.len() - 1] {
        let mut tampered = bytes.clone();
        tampered[index] ^= 0x01;
        let text = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&tampered));
        let err = signer
            .verifier()
            .verify(&text, &sandbox, SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(err, TokenError::BadSignature),
            "byte {index}: {err:?}"
        );
    }
}

#[test]
fn other_signers_key_fails() {
    let signer = TokenSigner::generate().unwrap();
    let other = TokenSigner::generate().unwrap();
    assert_ne!(signer.verifier(), other.verifier());
    let sandbox = id("sbx-abc");
    let token = signer.mint(&sandbox, Scope::Ssh, HOUR);
    let err = other
        .verifier()
        .verify(token.expose(), &sandbox, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, TokenError::BadSignature), "{err:?}");
}

#[test]
fn structural_errors_are_typed() {
    let signer = TokenSigner::generate().unwrap();
    let verifier = signer.verifier();
    let sandbox = id("sbx-abc");
    let good = encode_payload(&claims("sbx-abc", u64::MAX));
    let check = |payload: &[u8], want: fn(&TokenError) -> bool| {
        let err = verifier
            .verify(&forge(&signer, payload), &sandbox, SystemTime::now())
            .unwrap_err();
        assert!(want(&err), "{err:?}");
    };

    let mut p = good.clone();
    p[0] = 2;
    check(&p, |e| matches!(e, TokenError::UnknownVersion(2)));
    let mut p = good.clone();
    p[1] = 0;
    check(&p, |e| matches!(e, TokenError::UnknownScope(0)));
    check(&[good.as_slice(), b"x"].concat(), |e| {
        matches!(e, TokenError::Malformed(_))
    });
    check(&good[..good.len() - 1], |e| {
        matches!(e, TokenError::Malformed(_))
    });
    check(&[], |e| matches!(e, TokenError::Malformed(_)));

    // Well signed, but the id is not a valid SandboxId.
    for bad_id in [&b"ABC"[..], b"a", b"abc-", b"\xff\xfe\xfd"] {
        let mut p = good[..26].to_vec();
        p.push(bad_id.len() as u8);
        p.extend_from_slice(bad_id);
        check(&p, |e| matches!(e, TokenError::Malformed(_)));
    }
}

#[test]
fn garbage_inputs_are_errors() {
    let signer = TokenSigner::generate().unwrap();
    let verifier = signer.verifier();
    let sandbox = id("sbx-abc");
    let token = signer.mint(&sandbox, Scope::Ssh, HOUR).expose().to_owned();
    let too_long = [
        "a".repeat(1 << 20),
        format!("{TOKEN_PREFIX}{}", "A".repeat(600)),
        "🦀".repeat(200),
    ];
    let malformed = [
        String::new(),
        "password123".into(),
        TOKEN_PREFIX.into(),
        format!("{TOKEN_PREFIX}!!!!"),
        format!("{TOKEN_PREFIX}héllo🦀"),
        format!("{token}="),
        format!(" {token}"),
        format!("{token}\n"),
        token.replacen("wst1.", "wst2.", 1),
        token.replacen("wst1.", "WST1.", 1),
        token[..token.len() - 10].to_owned(),
    ];
    let inputs = too_long.iter().map(|s| (s, true));
    for (input, is_too_long) in inputs.chain(malformed.iter().map(|s| (s, false))) {
        let err = verifier
            .verify(input, &sandbox, SystemTime::now())
            .unwrap_err();
        if is_too_long {
            assert!(matches!(err, TokenError::TooLong), "{err:?}");
        } else {
            assert!(matches!(err, TokenError::Malformed(_)), "{err:?}");
        }
        // Messages never carry token text.
        let message = err.to_string();
        assert!(
            !message.contains(&token[TOKEN_PREFIX.len()..][..8]),
            "{message}"
        );
    }
}

#[test]
fn secrets_are_redacted() {
    let signer = TokenSigner::generate().unwrap();
    let token = signer.mint(&id("sbx-abc"), Scope::Ssh, HOUR);
    assert_eq!(format!("{token}"), "<redacted>");
    assert_eq!(format!("{token:?}"), "<redacted>");
    let parsed: SandboxToken = token.expose().parse().unwrap();
    assert_eq!(parsed.expose(), token.expose());
    let debug = format!("{signer:?}");
    assert!(debug.contains(&signer.verifier().to_base64()), "{debug}");
}

#[test]
fn verifier_encodings() {
    let signer = TokenSigner::generate().unwrap();
    let verifier = signer.verifier();
    let text = verifier.to_base64();
    assert_eq!(text.len(), 43);
    assert_eq!(TokenVerifier::from_base64(&text).unwrap(), verifier);
    assert_eq!(
        TokenVerifier::from_base64(&format!("{text}\n")).unwrap(),
        verifier
    );
    assert_eq!(text.parse::<TokenVerifier>().unwrap(), verifier);
    assert_eq!(verifier.to_string(), text);
    assert!(matches!(
        TokenVerifier::from_bytes(&[0; 31]),
        Err(TokenError::Key(_))
    ));
    assert!(matches!(
        TokenVerifier::from_base64("not base64!"),
        Err(TokenError::Key(_))
    ));
    // A 32-byte key that is not a valid point just fails to verify.
    let junk = TokenVerifier::from_bytes(&[0xff; 32]).unwrap();
    let sandbox = id("sbx-abc");
    let token = signer.mint(&sandbox, Scope::Ssh, HOUR);
    assert!(matches!(
        junk.verify(token.expose(), &sandbox, SystemTime::now()),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn signing_key_is_persisted_0600_and_reloaded() {
    let dir = TestDir::new();
    let path = dir.path().join("state/token_ed25519.pk8");
    let signer = TokenSigner::load_or_generate(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = TokenSigner::load_or_generate(&path).unwrap();
    assert_eq!(again.verifier(), signer.verifier());

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        TokenSigner::load_or_generate(&path),
        Err(TokenError::InsecurePermissions { mode: 0o640, .. })
    ));

    fs::write(&path, b"junk").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        TokenSigner::load_or_generate(&path),
        Err(TokenError::Key(_))
    ));
}

#[test]
fn concurrent_generation_agrees_on_one_key() {
    let dir = TestDir::new();
    let path = dir.path().join("token.pk8");
    let keys: Vec<TokenVerifier> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| TokenSigner::load_or_generate(&path).unwrap().verifier()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.iter().all(|k| *k == keys[0]));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

static SIGNER: LazyLock<TokenSigner> = LazyLock::new(|| TokenSigner::generate().unwrap());
static SANDBOX: LazyLock<SandboxId> = LazyLock::new(|| id("sbx-prop"));
static TOKEN: LazyLock<String> = LazyLock::new(|| {
    SIGNER
        .mint(
            &SANDBOX,
            Scope::Ssh,
            Duration::from_secs(100 * 365 * 24 * 3600),
        )
        .expose()
        .to_owned()
});

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutate(token: &str, m: &Mutation) -> Option<String> {
    let mut bytes = token.as_bytes().to_vec();
    let len = bytes.len();
    match *m {
        Mutation::Replace(i, b) => {
            let slot = &mut bytes[i.checked_rem(len)?];
            if *slot == b {
                return None; // identity: not a mutation
            }
            *slot = b;
        }
        Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
        Mutation::Remove(i) => {
            bytes.remove(i.checked_rem(len)?);
        }
        Mutation::Truncate(n) => bytes.truncate(n.checked_rem(len)?),
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

proptest! {
    #[test]
    fn arbitrary_strings_never_verify(s in any::<String>()) {
        prop_assert!(SIGNER.verifier().verify(&s, &SANDBOX, SystemTime::now()).is_err());
    }

    #[test]
    fn arbitrary_prefixed_base64_never_verifies(s in "wst1\\.[A-Za-z0-9_=-]{0,300}") {
        prop_assert!(SIGNER.verifier().verify(&s, &SANDBOX, SystemTime::now()).is_err());
    }

    #[test]
    fn mutated_tokens_never_verify(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let verifier = SIGNER.verifier();
        prop_assert!(verifier.verify(&TOKEN, &SANDBOX, SystemTime::now()).is_ok());
        let mut text = TOKEN.clone();
        for m in &mutations {
            if let Some(next) = mutate(&text, m) {
                text = next;
            }
        }
        prop_assume!(text != *TOKEN);
        prop_assert!(verifier.verify(&text, &SANDBOX, SystemTime::now()).is_err());
    }

    #[test]
    fn every_valid_id_round_trips(sandbox in "[a-z][a-z0-9-]{1,61}[a-z0-9]", nonce in any::<[u8; 16]>()) {
        let c = Claims { sandbox: id(&sandbox), scope: Scope::Ssh, expires_at: u64::MAX, nonce };
        let token = SIGNER.mint_claims(&c);
        let got = SIGNER.verifier().verify(token.expose(), &c.sandbox, SystemTime::now());
        prop_assert_eq!(got.ok(), Some(c));
    }
}
