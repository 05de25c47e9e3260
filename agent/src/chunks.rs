//! `warren-agent chunks`: the sandbox half of `warren sync`'s comparisons. Reads
//! records of two NUL-terminated fields from stdin — a path, and a seed path or
//! nothing — and prints one line per record: the file's size and the SHA-256 of
//! each chunk in hex, or `-` when it is not a regular file. With a seed, a missing
//! path is first made as a copy of the seed (mode 0600), so a changed file is
//! patched in a copy and renamed over the old one by the client.
//! It runs as the session's user, like any command: it reads what the user may.

use std::ffi::OsStr;
use std::io::{BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn run(chunk_size: u64) -> anyhow::Result<()> {
    let chunk_size = usize::try_from(chunk_size.clamp(4096, 64 << 20))?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut buf = vec![0u8; chunk_size];
    while let Some(path) = field(&mut input)? {
        let seed = field(&mut input)?.unwrap_or_default();
        let path = Path::new(OsStr::from_bytes(&path));
        if !seed.is_empty() && std::fs::symlink_metadata(path).is_err() {
            let seed = Path::new(OsStr::from_bytes(&seed));
            // The copy is hashed as it is written, so the part is read once. A
            // failed copy is answered by hashing what it left (nothing, `-`,
            // when the path could not be made).
            if let Ok(line) = copy(seed, path, &mut buf) {
                writeln!(out, "{line}")?;
                continue;
            }
        }
        match hash_file(path, buf.len() as u64) {
            Ok(line) => writeln!(out, "{line}")?,
            Err(_) => writeln!(out, "-")?,
        }
    }
    out.flush()?;
    Ok(())
}

/// Reads up to the next NUL; `None` at the end of input.
fn field(input: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut field = Vec::new();
    if input.read_until(0, &mut field)? == 0 {
        return Ok(None);
    }
    if field.last() == Some(&0) {
        field.pop();
    }
    Ok(Some(field))
}

/// Copies `seed` to a new file at `path` (mode 0600), answering the copy's line.
/// The kernel copies a chunk at a time (`copy_file_range`, no trip through this
/// process) while this thread hashes the chunks that have landed, read back from
/// the copy: the answer describes what the copy holds, even if the seed changes.
fn copy(seed: &Path, path: &Path, buf: &mut [u8]) -> std::io::Result<String> {
    let from = open_regular(seed)?;
    let to = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let chunk = buf.len() as u64;
    std::thread::scope(|scope| {
        let (landed_tx, landed) = std::sync::mpsc::sync_channel::<u64>(8);
        let (from, to) = (&from, &to);
        let copier = scope.spawn(move || -> std::io::Result<()> {
            loop {
                let n = std::io::copy(&mut from.take(chunk), &mut &*to)?;
                if n == 0 || landed_tx.send(n).is_err() || n < chunk {
                    return Ok(());
                }
            }
        });
        let mut size = 0u64;
        let mut line = String::new();
        let mut read_back = Ok(());
        for n in landed {
            let piece = &mut buf[..n as usize];
            if let Err(e) = std::os::unix::fs::FileExt::read_exact_at(to, piece, size) {
                read_back = Err(e);
                break;
            }
            size += n;
            push_hash(&mut line, piece);
        }
        copier
            .join()
            .map_err(|_| std::io::Error::other("the copy panicked"))??;
        read_back?;
        Ok(format!("{size}{line}"))
    })
}

fn hash_file(path: &Path, chunk: u64) -> std::io::Result<String> {
    hash_chunks(open_regular(path)?, chunk)
}

/// Appends ` HEX` (the SHA-256 of `chunk`) to `line`.
fn push_hash(line: &mut String, chunk: &[u8]) {
    push_digest(line, Sha256::digest(chunk).as_slice());
}

fn push_digest(line: &mut String, digest: &[u8]) {
    use std::fmt::Write as _;
    line.push(' ');
    for byte in digest {
        let _ = write!(line, "{byte:02x}");
    }
}

/// A regular file, opened for reading without following a link.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    Ok(file)
}

/// Reads `file` a chunk at a time, each streamed into its hash; answers `SIZE HEX…`.
fn hash_chunks(file: impl Read, chunk: u64) -> std::io::Result<String> {
    let mut file = std::io::BufReader::with_capacity(READ_BUF, file);
    let mut size = 0u64;
    let mut line = String::new();
    loop {
        let mut hasher = Sha256::new();
        let n = std::io::copy(&mut (&mut file).take(chunk), &mut hasher)?;
        if n == 0 {
            break;
        }
        size += n;
        push_digest(&mut line, hasher.finalize().as_slice());
        if n < chunk {
            break;
        }
    }
    Ok(format!("{size}{line}"))
}

/// How much of a file one read asks for while hashing it.
const READ_BUF: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_in_chunks_and_seeds_a_missing_part() {
        let dir = tempfile::TempDir::new().unwrap_or_else(|e| panic!("{e}"));
        let seed = dir.path().join("a");
        std::fs::write(&seed, b"hello world").unwrap_or_else(|e| panic!("{e}"));
        let mut buf = vec![0u8; 4];
        let line = hash_file(&seed, buf.len() as u64).unwrap_or_else(|e| panic!("{e}"));
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[0], "11");
        assert_eq!(words.len(), 1 + 3);
        let part = dir.path().join(".a.part");
        let copied = copy(&seed, &part, &mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(copied, line, "a copy answers the seed's hashes");
        assert_eq!(std::fs::read(&part).unwrap_or_default(), b"hello world");
        assert!(
            copy(&seed, &part, &mut buf).is_err(),
            "an existing part is kept"
        );
    }

    #[test]
    fn a_file_of_whole_chunks_has_no_empty_last_chunk() {
        let mut expected = "8".to_owned();
        push_hash(&mut expected, b"abcd");
        push_hash(&mut expected, b"efgh");
        assert_eq!(hash_chunks(&b"abcdefgh"[..], 4).ok(), Some(expected));
        assert_eq!(hash_chunks(&b""[..], 4).ok().as_deref(), Some("0"));
    }
}
