//! What a devcontainer create or start tells the gateway: notes for the
//! sandbox's events. Kept for the answer, or, where the gateway asks for progress
//! ([`crate::protocol::SandboxSpec::progress`]), sent at once as they happen, with
//! the lifecycle commands' output in batches while they run, so a person watching
//! the create sees it live.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// How often a running command's new output is sent.
const BATCH_EVERY: Duration = Duration::from_secs(2);
/// Lines and characters of one batch (the rest of a burst is skipped, saying so).
const BATCH_LINES: usize = 40;
const BATCH_CHARS: usize = 3000;
/// Batches of one command; later output shows only in its outcome's tail.
const MAX_BATCHES: usize = 30;
/// Output held back waiting for the end of its line.
const MAX_PARTIAL: usize = 4096;

/// Where notes go.
pub struct Notes {
    kept: Vec<String>,
    live: Option<UnboundedSender<String>>,
}

impl Notes {
    /// Notes sent to `live` as they come, if given; else kept for the answer.
    pub fn new(live: Option<UnboundedSender<String>>) -> Notes {
        Notes {
            kept: Vec::new(),
            live,
        }
    }

    pub fn push(&mut self, note: String) {
        match &self.live {
            // A gateway gone: kept, for what it is worth.
            Some(sink) => {
                if let Err(unsent) = sink.send(note) {
                    self.kept.push(unsent.0);
                }
            }
            None => self.kept.push(note),
        }
    }

    pub fn extend(&mut self, notes: impl IntoIterator<Item = String>) {
        for note in notes {
            self.push(note);
        }
    }

    /// Whether notes are seen as they come.
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// The notes not sent yet, for the answer.
    pub fn into_kept(self) -> Vec<String> {
        self.kept
    }
}

/// A running command's output, sent in batches of whole lines while it runs
/// (only where notes are live).
pub struct Output {
    label: String,
    sink: Option<UnboundedSender<String>>,
    partial: Vec<u8>,
    lines: Vec<String>,
    /// Lines of this batch dropped already (a burst: only the last lines are sent).
    skipped: usize,
    last_sent: Instant,
    batches: usize,
}

impl Output {
    pub fn new(label: &str, notes: &Notes) -> Output {
        Output {
            label: label.to_owned(),
            sink: notes.live.clone(),
            partial: Vec::new(),
            lines: Vec::new(),
            skipped: 0,
            last_sent: Instant::now(),
            batches: 0,
        }
    }

    /// A piece of output as the engine gave it.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.sink.is_none() || self.batches >= MAX_BATCHES {
            return;
        }
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if !line.trim().is_empty() {
                self.keep(line);
            }
        }
        if self.partial.len() > MAX_PARTIAL {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.keep(line);
            self.partial.clear();
        }
        if self.last_sent.elapsed() >= BATCH_EVERY {
            self.send();
        }
    }

    /// Keeps `line` for the batch, and only the batch's last lines: a command
    /// that floods its output within a batch's time must not fill the runner's
    /// memory.
    fn keep(&mut self, line: String) {
        self.lines.push(line);
        if self.lines.len() >= 2 * BATCH_LINES {
            let dropped = self.lines.len() - BATCH_LINES;
            self.lines.drain(..dropped);
            self.skipped += dropped;
        }
    }

    /// Sends what is left (at the command's end).
    pub fn finish(mut self) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).trim_end().to_owned();
            if !line.trim().is_empty() {
                self.lines.push(line);
            }
        }
        self.send();
    }

    fn send(&mut self) {
        self.last_sent = Instant::now();
        let Some(sink) = &self.sink else {
            return;
        };
        if self.lines.is_empty() || self.batches >= MAX_BATCHES {
            return;
        }
        let over = self.lines.len().saturating_sub(BATCH_LINES);
        let mut text = self.lines[over..].join("\n");
        let skipped = self.skipped + over;
        self.skipped = 0;
        if text.len() > BATCH_CHARS {
            let start = text
                .char_indices()
                .rev()
                .nth(BATCH_CHARS)
                .map_or(0, |(i, _)| i);
            text = text[start..].to_owned();
        }
        let more = if skipped > 0 {
            format!(" ({skipped} lines skipped)")
        } else {
            String::new()
        };
        self.lines.clear();
        self.batches += 1;
        let _ = sink.send(format!(
            "devcontainer: {} output{more}:\n{}",
            self.label,
            super::harmless(&text)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_go_live_or_are_kept() {
        let mut kept = Notes::new(None);
        kept.push("a".into());
        assert!(!kept.is_live());
        assert_eq!(kept.into_kept(), ["a"]);

        let (sink, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut live = Notes::new(Some(sink));
        live.extend(["b".to_owned(), "c".to_owned()]);
        let mut out = Output::new("postCreateCommand", &live);
        out.feed(b"one\r\ntw");
        out.feed(b"o\x1b[2J\n\n");
        out.feed(b"three");
        out.finish();
        assert!(live.into_kept().is_empty());
        let got: Vec<String> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                "b",
                "c",
                "devcontainer: postCreateCommand output:\none\ntwo\u{fffd}[2J\nthree"
            ]
        );
    }

    #[test]
    fn a_flood_keeps_only_a_batch_of_lines() {
        let (sink, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let live = Notes::new(Some(sink));
        let mut out = Output::new("postCreateCommand", &live);
        for _ in 0..10_000 {
            out.feed(b"y\ny\ny\ny\ny\ny\ny\ny\ny\ny\n");
        }
        assert!(out.lines.len() < 2 * BATCH_LINES, "{}", out.lines.len());
        out.finish();
        let got: Vec<String> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
        let expected = format!(
            "devcontainer: postCreateCommand output ({} lines skipped):\n{}",
            100_000 - BATCH_LINES,
            vec!["y"; BATCH_LINES].join("\n")
        );
        assert_eq!(got, [expected]);
    }
}
