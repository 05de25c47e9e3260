//! The one source of randomness: the OS CSPRNG via ring.

use ring::rand::{SecureRandom, SystemRandom};

/// `N` bytes from the operating system's CSPRNG.
///
/// # Panics
///
/// If the OS random source fails. On Linux that means `getrandom(2)` is unusable, and
/// carrying on with predictable ids, nonces or secrets would be worse than stopping.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if SystemRandom::new().fill(&mut buf).is_err() {
        panic!("the operating system's random number generator failed");
    }
    buf
}
