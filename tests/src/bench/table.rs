//! The Markdown tables: the same conditions, cells and row labels in every
//! benchmark's, so that their figures read alike.

use std::path::Path;
use std::thread;

use super::{CIPHER, KEX, KEYS, Scores};
use crate::Cmd;

/// The sentence above a table: where its figures come from.
pub fn conditions(dir: &Path) -> String {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let openssh = Cmd::new("ssh")
        .arg("-V")
        .run()
        .map(|o| o.stderr_str().trim().to_owned())
        .unwrap_or_default();
    format!(
        "Loopback, {cores} cores, {openssh}, cipher {CIPHER}, key exchange {KEX}, files \
         on {}. Throughput includes connection setup.",
        dir.display()
    )
}

/// A figure with its unit, or n/a when it was not measured.
pub fn cell(v: f64, unit: &str, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$} {unit}")
    } else {
        "n/a".to_owned()
    }
}

/// `v / base` to two decimals, or n/a.
pub fn ratio(base: f64, v: f64) -> String {
    let r = v / base;
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "n/a".to_owned()
    }
}

/// KiB as MiB; NaN (n/a) when not measured.
pub fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Picks one figure out of a server's [`Scores`].
pub type Figure = fn(&Scores) -> f64;
/// Picks one memory figure (KiB) out of a server's [`Scores`], if measured.
pub type MemoryFigure = fn(&Scores) -> Option<u64>;

/// The throughput rows, in MiB/s, of a run that moved `size_mib`.
pub fn throughput_rows(size_mib: u64) -> [(String, Figure); 6] {
    let rows: [(&str, Figure); 6] = [
        ("scp upload", |s| s.scp_up),
        ("scp download", |s| s.scp_down),
        ("sftp upload", |s| s.sftp_up),
        ("sftp download", |s| s.sftp_down),
        ("`cat` over exec, upload", |s| s.cat_up),
        ("`cat` over exec, download", |s| s.cat_down),
    ];
    rows.map(|(name, pick)| (format!("{name} ({size_mib} MiB)"), pick))
}

/// The cost rows of the `cat` transfers: label, unit, decimals and figure.
pub fn cost_rows() -> [(&'static str, &'static str, usize, Figure); 4] {
    [
        ("server CPU per GiB, `cat` upload", "s", 2, |s| {
            s.cat_up_cost.server_cpu_s_per_gib
        }),
        ("server CPU per GiB, `cat` download", "s", 2, |s| {
            s.cat_down_cost.server_cpu_s_per_gib
        }),
        ("machine busy, `cat` upload", "%", 0, |s| {
            s.cat_up_cost.busy_pct
        }),
        ("machine busy, `cat` download", "%", 0, |s| {
            s.cat_down_cost.busy_pct
        }),
    ]
}

/// The connection-time rows, in ms, of `runs` connections.
pub fn connect_rows(runs: usize) -> [(String, Figure); 3] {
    [
        (format!("`ssh host true`, mean of {runs}"), |s| {
            s.true_mean_ms
        }),
        (format!("`ssh host true`, p50 of {runs}"), |s| s.true_p50_ms),
        (format!("`ssh host true`, p90 of {runs}"), |s| s.true_p90_ms),
    ]
}

/// The keystroke row's label (its figure is [`Scores::key_p50_ms`], in ms).
pub fn keystroke_row() -> String {
    format!("keystroke echo on a PTY, p50 of {KEYS}")
}

/// The memory rows of a run with `sessions` idle sessions.
pub fn memory_rows(sessions: usize) -> [(String, MemoryFigure); 4] {
    [
        ("RSS, idle (no session)".into(), |s| Some(s.idle.rss_kib)),
        ("RSS, 1 idle session".into(), |s| s.one.map(|m| m.rss_kib)),
        (format!("RSS, {sessions} idle sessions"), |s| {
            s.many.map(|m| m.rss_kib)
        }),
        (format!("PSS, {sessions} idle sessions"), |s| {
            s.many.map(|m| m.pss_kib)
        }),
    ]
}
