//! The recording policy: what is recorded, how long it is kept, and the bounds on
//! the disk recordings take; as `warren-gateway serve` flags ([`RecordingArgs`]).

use std::path::PathBuf;
use std::time::Duration;

/// What the gateway records, and for how long it keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingPolicy {
    /// Record terminal sessions at all.
    pub enabled: bool,
    /// Also record what users type. Off by default: passwords typed at prompts
    /// would be kept in the clear.
    pub input: bool,
    /// Refuse what cannot be recorded: jump mode (`ssh -J`), and a terminal session
    /// whose recording cannot be written (a full disk ends it).
    pub required: bool,
    /// How long a recording is kept after its last write.
    pub retention: Duration,
    /// The most one recording takes on disk, in bytes; it is cut there.
    pub max_size: u64,
    /// The most all recordings take on disk; the oldest go to stay under it.
    pub max_total: u64,
    /// Free space left on the recordings' file system: recording stops below it.
    pub min_free: u64,
    /// Where recordings go (default: `<data-dir>/recordings`).
    pub dir: Option<PathBuf>,
}

/// The bounds' defaults, as the flags show them.
const DEFAULT_MAX_SIZE: &str = "64M";
const DEFAULT_MAX_TOTAL: &str = "4G";
const DEFAULT_MIN_FREE: &str = "1G";

impl Default for RecordingPolicy {
    fn default() -> RecordingPolicy {
        RecordingPolicy {
            enabled: true,
            input: false,
            required: false,
            retention: Duration::from_secs(30 * 24 * 3600),
            max_size: parse_size(DEFAULT_MAX_SIZE).unwrap_or(64 << 20),
            max_total: parse_size(DEFAULT_MAX_TOTAL).unwrap_or(4 << 30),
            min_free: parse_size(DEFAULT_MIN_FREE).unwrap_or(1 << 30),
            dir: None,
        }
    }
}

/// The recording policy as command-line flags (`warren-gateway serve`, `warren up`).
#[derive(Debug, Clone, clap::Args)]
pub struct RecordingArgs {
    /// Record no terminal sessions.
    #[arg(long, conflicts_with_all = ["record_input", "require_recording"])]
    pub no_recording: bool,
    /// Also record what users type in terminal sessions (passwords typed at
    /// prompts included).
    #[arg(long)]
    pub record_input: bool,
    /// Refuse what cannot be recorded: jump mode (ssh -J), and terminal sessions
    /// when their recording cannot be written.
    #[arg(long)]
    pub require_recording: bool,
    /// Delete recordings this long after their last write: 90d, 12h, 30m, 45s.
    #[arg(long, default_value = "30d", value_parser = parse_age)]
    pub recording_retention: Duration,
    /// Cut a recording when it reaches this size on disk (a final marker says so):
    /// 64M, 512K, 1G.
    #[arg(long, default_value = DEFAULT_MAX_SIZE, value_parser = parse_size)]
    pub recording_max_size: u64,
    /// Delete the oldest recordings when all of them together pass this size.
    #[arg(long, default_value = DEFAULT_MAX_TOTAL, value_parser = parse_size)]
    pub recording_max_total: u64,
    /// Stop recording while the recordings' file system has less free space than
    /// this (room kept for the store and everything else on that disk).
    #[arg(long, default_value = DEFAULT_MIN_FREE, value_parser = parse_size)]
    pub recording_min_free: u64,
    /// Keep recordings in this folder (default: <data-dir>/recordings), e.g. on a
    /// file system of their own.
    #[arg(long)]
    pub recording_dir: Option<PathBuf>,
}

impl RecordingArgs {
    pub fn policy(&self) -> RecordingPolicy {
        RecordingPolicy {
            enabled: !self.no_recording,
            input: self.record_input,
            required: self.require_recording,
            retention: self.recording_retention,
            max_size: self.recording_max_size,
            max_total: self.recording_max_total,
            min_free: self.recording_min_free,
            dir: self.recording_dir.clone(),
        }
    }
}

/// A size in bytes: `64M`, `512K`, `4G`, `1T` (powers of 1024; `MiB`, `MB` and
/// lower case too), or plain bytes; at least 4 KiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(text, "", "K, M, G or T (e.g. 64M)")?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{text:?}: the unit is K, M, G or T (e.g. 64M)")),
    };
    match n.checked_mul(1 << shift) {
        Some(bytes) if bytes >= 4096 => Ok(bytes),
        Some(_) => Err(format!("{text:?}: at least 4K")),
        None => Err(format!("{text:?}: too large")),
    }
}

/// `90d`, `12h`, `30m`, `45s` (or plain seconds).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(text, "s", "d, h, m or s (e.g. 30d)")?;
    let unit_s = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit is d, h, m or s (e.g. 30d)")),
    };
    match n.checked_mul(unit_s) {
        Some(0) | None => Err(format!("{text:?}: more than zero, at most centuries")),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// `64M` as 64 and `M` (`default` when there is no unit); `units` says which
/// there are, for the message.
fn number_and_unit<'a>(
    text: &'a str,
    default: &'a str,
    units: &str,
) -> Result<(u64, &'a str), String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, default),
    };
    let n = number
        .parse()
        .map_err(|_| format!("{text:?}: a number and {units}"))?;
    Ok((n, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_people_write_them() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512kb"), Ok(512 << 10));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("1K").is_err_and(|e| e.contains("at least")));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999T").is_err());
    }
}
