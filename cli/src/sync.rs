//! `warren sync ./dir <id>:/path` and `warren mirror <id>:/path ./dir`: the CLI's
//! side of warren-sync. It finds the
//! sandbox and the gateway's host key through the API, logs in as `ssh <id>@gateway`
//! does with the saved API key, and draws the library's progress events: an
//! `indicatif` bar on a terminal, JSON lines with `--progress json`, nothing
//! otherwise. Names, link texts and error messages may come from the sandbox:
//! everything drawn for a person goes through `escape_controls` (JSON lines are
//! escaped as JSON).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use warren_sync::{Credential, Endpoint, Event, Progress, Secret, Stage, escape_controls};

use crate::client::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, nothing otherwise.
    Auto,
    /// A progress bar.
    Bar,
    /// One JSON object per event, a line each, on stdout.
    Json,
    /// Nothing but the summary.
    None,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// The local directory to send.
    pub source: PathBuf,
    /// `<sandbox-id>:<path>` (a relative path is under the sandbox user's home).
    pub target: String,
    /// Skip paths matching this gitignore-style pattern (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Remove what is in the target but not in the source.
    #[arg(long)]
    pub delete: bool,
    /// List what would change; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(clap::Args)]
pub struct MirrorArgs {
    /// `<sandbox-id>:<path>` to mirror.
    pub source: String,
    /// The local directory kept like it.
    pub target: PathBuf,
    /// Keep a locally modified file as `NAME.warren-backup` before the sandbox's
    /// version replaces it.
    #[arg(long)]
    pub backup: bool,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `<id>:<path>` split at the first colon.
pub fn split_remote(spec: &str) -> anyhow::Result<(&str, &str)> {
    match spec.split_once(':') {
        Some((id, path)) if !id.is_empty() => Ok((id, path)),
        _ => bail!("{spec:?} is not <sandbox-id>:<path>"),
    }
}

/// The sandbox's SSH address and the gateway's host keys, from the API.
pub async fn endpoint(sandbox: &str) -> anyhow::Result<Endpoint> {
    let config = Config::load()?;
    let api = config.client()?;
    let found = api.get_sandbox(sandbox).await?;
    let known = api.host_keys().await?;
    let host_keys = known
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let _hosts = words.next()?;
            let key = format!("{} {}", words.next()?, words.next()?);
            russh::keys::PublicKey::from_openssh(&key).ok()
        })
        .collect::<Vec<_>>();
    if host_keys.is_empty() {
        bail!("the API gave no gateway host key to pin");
    }
    Ok(Endpoint {
        host: found.ssh.host,
        port: found.ssh.port,
        sandbox: found.ssh.user,
        credential: Credential::Password(Secret::new(config.api_key)),
        host_keys,
    })
}

pub async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let (id, path) = split_remote(&args.target)?;
    let endpoint = endpoint(id).await?;
    let mut options = warren_sync::SeedOptions::new(&args.source, path);
    options.excludes = args.excludes;
    options.delete = args.delete;
    options.dry_run = args.dry_run;
    let (tx, rx) = mpsc::unbounded_channel();
    let display = tokio::spawn(show(rx, args.progress, args.dry_run));
    let result = warren_sync::seed(&endpoint, &options, tx).await;
    let _ = display.await;
    let summary = result.map_err(shown)?;
    if args.progress != ProgressMode::Json {
        let verb = if args.dry_run { "would send" } else { "sent" };
        eprintln!(
            "{verb} {} of {} files ({}), {} unchanged, {} removed",
            summary.files_sent,
            summary.files_total,
            human_bytes(summary.bytes_sent),
            summary.files_skipped,
            summary.deleted
        );
    }
    Ok(())
}

pub async fn mirror(args: MirrorArgs) -> anyhow::Result<()> {
    let (id, path) = split_remote(&args.source)?;
    let endpoint = endpoint(id).await?;
    let mut options = warren_sync::MirrorOptions::new(path, &args.target);
    options.backup = args.backup;
    let (tx, rx) = mpsc::unbounded_channel();
    let display = tokio::spawn(show(rx, args.progress, false));
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = warren_sync::mirror(&endpoint, &options, tx, stop).await;
    let _ = display.await;
    result.map_err(shown)?;
    Ok(())
}

/// A library error as the terminal may show it (its text can quote the sandbox).
fn shown(e: warren_sync::SyncError) -> anyhow::Error {
    anyhow::anyhow!("{}", escape_controls(&e.to_string()))
}

/// A JSON line with DEL, the C1 controls (U+0080–U+009F) and the bidirectional
/// overrides and isolates written as `\u00XX` escapes: serde leaves them raw, and
/// a sandbox's names would reach a terminal that shows the line. They can only
/// stand inside strings, where the escape means the same character.
fn json_controls_escaped(line: &str) -> std::borrow::Cow<'_, str> {
    let raw = |c: char| matches!(c as u32, 0x7f..=0x9f | 0x202a..=0x202e | 0x2066..=0x2069);
    if !line.chars().any(raw) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if raw(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Draws events until the library drops its sender.
pub async fn show(mut rx: mpsc::UnboundedReceiver<Event>, mode: ProgressMode, dry_run: bool) {
    let mode = match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::None,
        other => other,
    };
    let mut bar = Bar::new(mode == ProgressMode::Bar);
    while let Some(event) = rx.recv().await {
        match (&event, mode) {
            (_, ProgressMode::Json) => {
                if let Ok(line) = serde_json::to_string(&event) {
                    println!("{}", json_controls_escaped(&line));
                }
            }
            (Event::Change { op, path }, _) if dry_run => bar.println(&format!(
                "{:<7} {}",
                format!("{op:?}").to_lowercase(),
                escape_controls(path)
            )),
            (Event::Warning { message }, _) => {
                bar.println(&format!("warning: {}", escape_controls(message)))
            }
            (Event::Progress(p), ProgressMode::Bar) => bar.update(p),
            (Event::Status { .. }, ProgressMode::Bar) => bar.status(&event),
            _ => {}
        }
    }
    bar.finish();
}

/// The terminal display: one bar, restyled per stage, redrawn at most every 0.5 s
/// (indicatif's draw rate) and ticking while a stage is slow.
pub struct Bar {
    bar: Option<ProgressBar>,
    stage: Option<Stage>,
}

const TEMPLATE: &str = "{spinner} {prefix:>11} [{bar:20}] {percent:>3}% {msg}";

impl Bar {
    pub fn new(enabled: bool) -> Bar {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(10_000),
                indicatif::ProgressDrawTarget::stderr_with_hz(2),
            );
            if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Bar { bar, stage: None }
    }

    pub fn update(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        if self.stage != Some(p.stage) {
            self.stage = Some(p.stage);
            bar.set_prefix(stage_name(p.stage));
        }
        bar.set_position((p.percent * 100.0) as u64);
        let mut msg = format!(
            "{}/{} files, {}/{}",
            p.files_done,
            p.files_total,
            human_bytes(p.bytes_done),
            human_bytes(p.bytes_total)
        );
        if p.bytes_per_s > 0.0 {
            msg.push_str(&format!(
                ", {}/s",
                indicatif::HumanBytes(p.bytes_per_s as u64)
            ));
        }
        if let Some(eta) = p.eta_s.filter(|e| e.is_finite() && *e > 0.0) {
            msg.push_str(&format!(
                ", ETA {}",
                indicatif::HumanDuration(Duration::from_secs_f64(eta))
            ));
        }
        if let Some(current) = &p.current {
            msg.push_str(&format!("  {}", shorten(&escape_controls(current), 24)));
        }
        bar.set_message(msg);
    }

    pub fn status(&mut self, event: &Event) {
        let (
            Some(bar),
            Event::Status {
                state,
                pending,
                failed,
                applied,
            },
        ) = (&self.bar, event)
        else {
            return;
        };
        bar.set_prefix(stage_name(*state));
        bar.set_position(10_000);
        bar.set_message(format!(
            "{applied} applied, {pending} pending, {failed} failed"
        ));
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Discovering => "discovering",
        Stage::Indexing => "indexing",
        Stage::Uploading => "uploading",
        Stage::Downloading => "downloading",
        Stage::Verifying => "verifying",
        Stage::Done => "done",
        Stage::Live => "live",
        Stage::CatchingUp => "catching up",
        Stage::Reconnecting => "reconnecting",
    }
}

/// The last `max` characters of a path, with an ellipsis when cut.
fn shorten(path: &str, max: usize) -> String {
    let count = path.chars().count();
    if count <= max {
        return path.to_owned();
    }
    let tail: String = path.chars().skip(count - (max - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs() {
        assert_eq!(split_remote("sbx-1:/w/a:b").ok(), Some(("sbx-1", "/w/a:b")));
        assert_eq!(split_remote("sbx-1:").ok(), Some(("sbx-1", "")));
        assert!(split_remote("/nowhere").is_err());
        assert_eq!(shorten("abcdef", 4), "…def");
    }

    #[test]
    fn json_progress_carries_no_raw_controls() {
        let event = Event::Change {
            op: warren_sync::Op::Download,
            path: "a\u{9b}6n\u{9d}52;c;eA==\u{9c}\u{7f}\u{202e}\x1b]0;x\x07".into(),
        };
        let line = serde_json::to_string(&event).unwrap_or_default();
        let escaped = json_controls_escaped(&line);
        assert!(
            !escaped.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{escaped}"
        );
        assert!(escaped.contains("\\u009b6n"), "{escaped}");
        // The same string, read back.
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap_or_default();
        let path = back.pointer("/path").and_then(|p| p.as_str());
        assert_eq!(
            path,
            Some("a\u{9b}6n\u{9d}52;c;eA==\u{9c}\u{7f}\u{202e}\x1b]0;x\x07")
        );
        assert!(matches!(
            json_controls_escaped("{\"a\":1}"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
