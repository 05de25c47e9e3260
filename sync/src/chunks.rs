//! Chunk hashes: the unit a large file is compared, resumed and patched in. The
//! sandbox side hashes with the agent binary that is in every sandbox
//! (`warren-agent chunks`, over exec), so comparing a file never downloads it.

use sha2::{Digest, Sha256};

use crate::connect::Connection;
use crate::error::SyncError;
use crate::shell::shell_quote;

/// Files are compared in chunks of this size.
pub const CHUNK: u64 = 1024 * 1024;

pub type Hash = [u8; 32];

pub fn hash(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// Where the runner puts the agent in a Docker sandbox (read-only bind mount).
pub const AGENT_IN_SANDBOX: &str = "/.warren/bin/warren-agent";

/// The command words that run the agent's helpers (the helper's name and
/// arguments follow): `agent` when given, else the session's own agent
/// (`WARREN_AGENT`, which every agent sets in its sessions, wherever its backend
/// put it; the Docker mount for agents older than that). The variable is expanded
/// by `sh`, whatever the user's login shell (fish and csh read `${…:-…}` otherwise).
pub fn agent_word(agent: Option<&str>) -> String {
    match agent {
        Some(path) => shell_quote(path),
        None => {
            format!("sh -c 'exec \"${{WARREN_AGENT:-{AGENT_IN_SANDBOX}}}\" \"$@\"' warren-agent")
        }
    }
}

/// One question for the helper: hash `path`, after copying `seed` to it when
/// `path` is missing (so a changed file is patched in a copy, never in place).
pub struct Ask {
    pub path: String,
    pub seed: Option<String>,
}

/// A remote file's size and chunk hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks {
    pub size: u64,
    pub hashes: Vec<Hash>,
}

/// Asks the agent helper about `asks`; `None` per file it could not read, and
/// `Err(Helper)` when there is no helper (a sandbox without the agent at its path).
pub async fn remote(
    conn: &Connection,
    agent: Option<&str>,
    asks: &[Ask],
) -> Result<Vec<Option<Chunks>>, SyncError> {
    if asks.is_empty() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    for ask in asks {
        input.extend_from_slice(ask.path.as_bytes());
        input.push(0);
        input.extend_from_slice(ask.seed.as_deref().unwrap_or("").as_bytes());
        input.push(0);
    }
    let command = format!("{} chunks --chunk-size {CHUNK}", agent_word(agent));
    let out = conn.exec(&command, &input).await?;
    if out.status != Some(0) {
        return Err(SyncError::Helper(format!(
            "{command}: exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<Option<Chunks>> = text.lines().map(parse_line).collect();
    if answers.len() != asks.len() {
        return Err(SyncError::Helper(format!(
            "{} answers for {} files",
            answers.len(),
            asks.len()
        )));
    }
    Ok(answers)
}

/// `SIZE HEX HEX…`, or `-` for a file that is not there.
fn parse_line(line: &str) -> Option<Chunks> {
    let mut words = line.split_ascii_whitespace();
    let size = words.next()?.parse().ok()?;
    let hashes = words.map(from_hex).collect::<Option<Vec<_>>>()?;
    Some(Chunks { size, hashes })
}

fn from_hex(word: &str) -> Option<Hash> {
    let bytes = word.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The chunk hashes of a local file.
pub fn local(path: &std::path::Path) -> std::io::Result<Chunks> {
    of_reader(std::fs::File::open(path)?)
}

/// The chunk hashes of what `reader` holds, each chunk streamed into its hash.
fn of_reader(reader: impl std::io::Read) -> std::io::Result<Chunks> {
    use std::io::Read as _;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
    let mut out = Chunks {
        size: 0,
        hashes: Vec::new(),
    };
    loop {
        let mut hasher = Sha256::new();
        let n = std::io::copy(&mut (&mut reader).take(CHUNK), &mut hasher)?;
        if n == 0 {
            break;
        }
        out.size += n;
        out.hashes.push(hasher.finalize().into());
        if n < CHUNK {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_a_reader_in_whole_chunks() {
        let data = vec![7u8; CHUNK as usize * 2 + 3];
        let chunks = of_reader(&data[..]).unwrap();
        assert_eq!(chunks.size, data.len() as u64);
        let (a, rest) = data.split_at(CHUNK as usize);
        let (b, c) = rest.split_at(CHUNK as usize);
        assert_eq!(chunks.hashes, [hash(a), hash(b), hash(c)]);
        let whole = of_reader(&data[..CHUNK as usize]).unwrap();
        assert_eq!(whole.hashes.len(), 1, "no empty chunk after a whole one");
        assert_eq!(of_reader(&b""[..]).unwrap().hashes.len(), 0);
    }

    #[test]
    fn parses_answers() {
        let h = "ab".repeat(32);
        assert_eq!(
            parse_line(&format!("5 {h}")),
            Some(Chunks {
                size: 5,
                hashes: vec![[0xab; 32]]
            })
        );
        assert_eq!(parse_line("-"), None);
        assert_eq!(parse_line("0").map(|c| c.hashes.len()), Some(0));
    }
}
