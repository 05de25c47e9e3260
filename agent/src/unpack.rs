//! `warren-agent unpack`: the sandbox half of `warren sync`'s batch of small files.
//! SFTP costs five requests per file (open, write, close, setstat, rename), so a tree
//! of thousands of small files is bound by round trips; this reads them all from one
//! stream instead. Each record on stdin is
//!
//! ```text
//! PART \0 FINAL \0 MODE MTIME SIZE \0 <SIZE bytes>
//! ```
//!
//! (paths absolute, numbers decimal, mode in octal). The content goes to PART (made
//! 0600, never through a link), gets its mode and mtime, and is renamed onto FINAL,
//! so nothing half-written is ever visible under FINAL. One line is printed per
//! record, in order: `ok`, or `error <message>` (the file's bytes are skipped and
//! the next record read). A malformed record ends the run with an error.
//!
//! It runs as the session's user, like any command: it writes what the user may.

use std::ffi::OsStr;
use std::fs::{File, FileTimes, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// One record's header.
struct Header {
    part: Vec<u8>,
    target: Vec<u8>,
    mode: u32,
    mtime: i64,
    size: u64,
}

pub fn run() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(256 * 1024, stdin.lock());
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    loop {
        // Answers go out whenever the next read would wait for the client, so it
        // learns of finished files as they finish, in few packets.
        if input.buffer().is_empty() {
            out.flush()?;
        }
        let Some(header) = header(&mut input)? else {
            break;
        };
        match write_one(&header, &mut input) {
            Ok(()) => writeln!(out, "ok")?,
            Err(Failure::Local(e)) => {
                let message = e.to_string().replace('\n', " ");
                writeln!(out, "error {message}")?;
            }
            Err(Failure::Input(e)) => return Err(e.into()),
        }
    }
    out.flush()?;
    Ok(())
}

enum Failure {
    /// Writing this file failed; its bytes were read, the stream goes on.
    Local(std::io::Error),
    /// The stream itself failed.
    Input(std::io::Error),
}

fn header(input: &mut impl BufRead) -> anyhow::Result<Option<Header>> {
    let Some(part) = field(input)? else {
        return Ok(None);
    };
    let target = field(input)?.ok_or_else(|| anyhow::anyhow!("record cut short"))?;
    let numbers = field(input)?.ok_or_else(|| anyhow::anyhow!("record cut short"))?;
    let text = std::str::from_utf8(&numbers)?;
    let mut words = text.split(' ');
    let mut next = || {
        words
            .next()
            .ok_or_else(|| anyhow::anyhow!("bad header {text:?}"))
    };
    let mode = u32::from_str_radix(next()?, 8)?;
    let mtime = next()?.parse()?;
    let size = next()?.parse()?;
    anyhow::ensure!(
        part.starts_with(b"/") && target.starts_with(b"/"),
        "paths must be absolute"
    );
    Ok(Some(Header {
        part,
        target,
        mode,
        mtime,
        size,
    }))
}

/// Reads up to the next NUL; `None` at the end of input.
fn field(input: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut field = Vec::new();
    if input.read_until(0, &mut field)? == 0 {
        return Ok(None);
    }
    if field.pop() != Some(0) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(field))
}

fn write_one(h: &Header, input: &mut impl Read) -> Result<(), Failure> {
    let part = Path::new(OsStr::from_bytes(&h.part));
    let target = Path::new(OsStr::from_bytes(&h.target));
    let mut content = input.take(h.size);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(part)?;
        let copied = std::io::copy(&mut content, &mut file)?;
        Ok::<_, std::io::Error>((file, copied))
    })();
    let (file, copied) = match written {
        Ok(done) => done,
        Err(e) => {
            // Keep the stream framed: the rest of this file's bytes are not a header.
            std::io::copy(&mut content, &mut std::io::sink()).map_err(Failure::Input)?;
            let _ = std::fs::remove_file(part);
            return Err(Failure::Local(e));
        }
    };
    if copied != h.size {
        let _ = std::fs::remove_file(part);
        return Err(Failure::Input(std::io::ErrorKind::UnexpectedEof.into()));
    }
    finish(&file, h, part, target).map_err(|e| {
        let _ = std::fs::remove_file(part);
        Failure::Local(e)
    })
}

fn finish(file: &File, h: &Header, part: &Path, target: &Path) -> std::io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(h.mode & 0o7777))?;
    let t = if h.mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(h.mtime.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(h.mtime.unsigned_abs())
    };
    file.set_times(FileTimes::new().set_accessed(t).set_modified(t))?;
    std::fs::rename(part, target)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record(part: &Path, target: &Path, mode: u32, mtime: i64, data: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(part.as_os_str().as_bytes());
        r.push(0);
        r.extend_from_slice(target.as_os_str().as_bytes());
        r.push(0);
        r.extend_from_slice(format!("{mode:o} {mtime} {}", data.len()).as_bytes());
        r.push(0);
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn writes_each_file_under_its_final_name_with_mode_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let (part, a) = (dir.path().join(".a.warren-part"), dir.path().join("a"));
        let mut input = record(&part, &a, 0o750, 1_600_000_000, b"hello");
        // A file whose directory is missing fails alone; the next one is written.
        let missing = dir.path().join("no/such");
        input.extend(record(&missing, &missing, 0o644, 0, b"lost"));
        let b = dir.path().join("b");
        input.extend(record(&dir.path().join(".b.part"), &b, 0o644, 0, b""));
        let mut reader = std::io::Cursor::new(input);
        let mut answers = Vec::new();
        while let Some(h) = header(&mut reader).unwrap() {
            answers.push(write_one(&h, &mut reader).is_ok());
        }
        assert_eq!(answers, [true, false, true]);
        assert_eq!(std::fs::read(&a).unwrap(), b"hello");
        let meta = std::fs::metadata(&a).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        assert_eq!(meta.mtime(), 1_600_000_000);
        assert!(!part.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"");
    }

    #[test]
    fn never_writes_through_a_link_at_the_part_name() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let part = dir.path().join(".x.part");
        std::os::unix::fs::symlink(&outside, &part).unwrap();
        let input = record(&part, &dir.path().join("x"), 0o644, 0, b"evil");
        let mut reader = std::io::Cursor::new(input);
        let h = header(&mut reader).unwrap().unwrap();
        assert!(write_one(&h, &mut reader).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
    }

    #[test]
    fn a_malformed_header_is_an_error() {
        let bad: [&[u8]; 3] = [
            b"/p\x00/t\x00x 0 0\x00",
            b"/p\x00/t\x000 0\x00",
            b"p\x00t\x000 0 0\x00",
        ];
        for bad in bad {
            assert!(header(&mut std::io::Cursor::new(bad)).is_err());
        }
    }
}
