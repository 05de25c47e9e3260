//! The asciicast v2 format, as asciinema plays it: a JSON header on the first line,
//! then one JSON array per event, `[seconds, code, data]`, code `o` (output), `i`
//! (input), `r` (a resize, data `COLSxROWS`) or `m` (a marker, data its label).
//!
//! Event data is text, so bytes are decoded as UTF-8 per stream without splitting a
//! character across two events; bytes that are not UTF-8 become U+FFFD.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    /// When it started, Unix seconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
    /// The account whose sandbox is recorded (its share of the recordings' total).
    #[serde(
        rename = "warren_account",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub account: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Env {
    #[serde(rename = "TERM", default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

impl Env {
    fn is_empty(&self) -> bool {
        self.term.is_none()
    }
}

impl Header {
    pub fn new(width: u32, height: u32, timestamp: i64) -> Header {
        Header {
            version: 2,
            width,
            height,
            timestamp,
            command: None,
            title: None,
            env: Env::default(),
            account: None,
        }
    }

    /// The header's line, newline included.
    pub fn line(&self) -> String {
        // A struct of strings and numbers always serializes.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// An event's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Output,
    Input,
    Resize,
    /// A marker (asciicast v2 `m`), here where a recording was cut.
    Marker,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::Output => "o",
            Code::Input => "i",
            Code::Resize => "r",
            Code::Marker => "m",
        }
    }
}

/// Appends one event's line to `out`.
pub fn push_event(out: &mut Vec<u8>, at: Duration, code: Code, text: &str) {
    open_event(out, at, code);
    escape_into(out, text);
    out.extend_from_slice(b"\"]\n");
}

/// Appends the event of a chunk of one stream's bytes, decoded by `stream`; nothing
/// if the chunk holds no whole character yet. No allocation on the way: the text is
/// escaped from the chunk itself.
pub fn push_chunk(
    out: &mut Vec<u8>,
    at: Duration,
    code: Code,
    stream: &mut Utf8Stream,
    chunk: &[u8],
) {
    let start = out.len();
    open_event(out, at, code);
    let text_at = out.len();
    stream.decode(chunk, |piece| escape_into(out, piece));
    if out.len() == text_at {
        out.truncate(start);
    } else {
        out.extend_from_slice(b"\"]\n");
    }
}

/// The start of `line` (one output or input event as [`push_chunk`] writes it,
/// newline included) in at most `max` bytes, closed again as an event; `None` if
/// not one character of its text fits. The cut falls between two escapes or
/// characters, never inside one.
pub fn cut_event(line: &[u8], max: usize) -> Option<Vec<u8>> {
    const CLOSE: &[u8] = b"\"]\n";
    // `[time, "o", "`: the text starts after the third quote.
    let open = line
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'"')
        .nth(2)?
        .0
        + 1;
    let code = line.get(open.checked_sub(5)?)?;
    if !matches!(code, b'o' | b'i') {
        return None;
    }
    let budget = max.checked_sub(CLOSE.len())?;
    let text_end = line.len().checked_sub(CLOSE.len())?;
    let mut end = open;
    while end < text_end {
        let step = match line[end] {
            b'\\' if line.get(end + 1) == Some(&b'u') => 6,
            b'\\' => 2,
            0xf0.. => 4,
            0xe0.. => 3,
            0xc0.. => 2,
            _ => 1,
        };
        if end + step > budget {
            break;
        }
        end += step;
    }
    if end == open {
        return None;
    }
    let mut cut = line[..end].to_vec();
    cut.extend_from_slice(CLOSE);
    Some(cut)
}

fn open_event(out: &mut Vec<u8>, at: Duration, code: Code) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "[{:.6}, \"{}\", \"", at.as_secs_f64(), code.as_str());
}

/// `text` as the inside of a JSON string.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if escaped.is_empty() {
            use std::io::Write;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escaped);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Decodes one stream's chunks as UTF-8, holding back an incomplete character at a
/// chunk's end until the next chunk completes it.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// Hands the text of `chunk` (with what was held back before it) to `text`, in
    /// pieces: valid runs, and U+FFFD for each invalid sequence.
    pub fn decode(&mut self, chunk: &[u8], mut text: impl FnMut(&str)) {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            // Complete the held-back character from the chunk's first bytes.
            let mut joined = std::mem::take(&mut self.carry);
            let take = rest.len().min(4 - joined.len().min(4));
            joined.extend_from_slice(&rest[..take]);
            match std::str::from_utf8(&joined) {
                Ok(valid) => {
                    text(valid);
                    rest = &rest[take..];
                }
                Err(e) if e.valid_up_to() > 0 => {
                    let used = e.valid_up_to() - (joined.len() - take);
                    text(std::str::from_utf8(&joined[..e.valid_up_to()]).unwrap_or_default());
                    rest = &rest[used..];
                }
                Err(e) => match e.error_len() {
                    None => {
                        // Still incomplete: the chunk was shorter than the character.
                        self.carry = joined;
                        return;
                    }
                    Some(bad) => {
                        text("\u{fffd}");
                        let used = bad.saturating_sub(joined.len() - take);
                        rest = &rest[used..];
                    }
                },
            }
        }
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text(valid);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // Valid: from_utf8 just said so.
                    text(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text("\u{fffd}");
                            rest = &after[bad..];
                        }
                        None => {
                            // A character cut at the chunk's end: keep it for later.
                            self.carry = after.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// [`Utf8Stream::decode`] into a string.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut out = String::new();
        self.decode(chunk, |piece| out.push_str(piece));
        out
    }

    /// What is still held back, as text (the stream ended mid-character).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// One event read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: f64,
    pub code: String,
    pub data: String,
}

/// Why a recording could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("line {0}: {1}")]
    Json(usize, serde_json::Error),
    #[error("line {0}: not an asciicast event ([time, code, data])")]
    NotAnEvent(usize),
    #[error("the header says version {0}; only asciicast v2 is read")]
    Version(u32),
}

/// Parses a header line.
pub fn parse_header(line: &str) -> Result<Header, ParseError> {
    let header: Header = serde_json::from_str(line).map_err(|e| ParseError::Json(1, e))?;
    if header.version != 2 {
        return Err(ParseError::Version(header.version));
    }
    Ok(header)
}

/// Parses the event on line number `number` (for messages).
pub fn parse_event(line: &str, number: usize) -> Result<Event, ParseError> {
    let (at, code, data): (f64, String, String) =
        serde_json::from_str(line).map_err(|e| ParseError::Json(number, e))?;
    if !at.is_finite() || at < 0.0 {
        return Err(ParseError::NotAnEvent(number));
    }
    Ok(Event { at, code, data })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn characters_cut_between_chunks_are_joined_and_bad_bytes_replaced() {
        let mut s = Utf8Stream::default();
        let snow = "☃".as_bytes();
        assert_eq!(s.push(&[b'a', snow[0]]), "a");
        assert_eq!(s.push(&snow[1..2]), "");
        assert_eq!(s.push(&[snow[2], b'b']), "☃b");
        assert_eq!(s.push(&[0xff, b'c', 0xc3]), "\u{fffd}c");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.push(b"plain"), "plain");
        // A cut character followed by something else is replaced, not lost.
        assert_eq!(s.push(&[0xe2]), "");
        assert_eq!(s.push(b"A"), "\u{fffd}A");

        // Cut anywhere, in one, two or three pieces, text comes back whole.
        let text = "a☃b€𝄞c\u{1b}[0m";
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut s = Utf8Stream::default();
                let got = s.push(&bytes[..i]) + &s.push(&bytes[i..j]) + &s.push(&bytes[j..]);
                assert_eq!(got, text, "cut at {i} and {j}");
                assert_eq!(s.finish(), "");
            }
        }
    }

    #[test]
    fn an_event_is_cut_between_escapes_and_characters() {
        let mut line = Vec::new();
        push_event(&mut line, Duration::from_secs(1), Code::Output, "ab\0☃\"c");
        let whole = String::from_utf8(line.clone()).unwrap();
        assert_eq!(whole, "[1.000000, \"o\", \"ab\\u0000☃\\\"c\"]\n");
        let mut texts = Vec::new();
        for max in 0..=line.len() {
            let Some(cut) = cut_event(&line, max) else {
                continue;
            };
            assert!(cut.len() <= max, "{max}");
            let event = parse_event(std::str::from_utf8(&cut).unwrap().trim_end(), 2).unwrap();
            assert!("ab\0☃\"c".starts_with(&event.data), "{max}: {event:?}");
            texts.push(event.data);
        }
        texts.dedup();
        assert_eq!(texts, ["a", "ab", "ab\0", "ab\0☃", "ab\0☃\"", "ab\0☃\"c"]);
        // Resizes are not cut.
        let mut resize = Vec::new();
        push_event(&mut resize, Duration::ZERO, Code::Resize, "100x30");
        assert_eq!(cut_event(&resize, 20), None);
    }

    #[test]
    fn events_and_headers_read_back_as_written() {
        let mut header = Header::new(80, 24, 1_700_000_000);
        header.env.term = Some("xterm-256color".into());
        let line = header.line();
        assert!(line.ends_with('\n'));
        assert_eq!(parse_header(line.trim_end()).unwrap(), header);

        let mut out = Vec::new();
        push_event(
            &mut out,
            Duration::from_millis(1500),
            Code::Output,
            "a\"\u{1b}[1m\r\n",
        );
        push_event(&mut out, Duration::from_secs(2), Code::Resize, "100x30");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            parse_event(lines[0], 2).unwrap(),
            Event {
                at: 1.5,
                code: "o".into(),
                data: "a\"\u{1b}[1m\r\n".into()
            }
        );
        assert_eq!(parse_event(lines[1], 3).unwrap().data, "100x30");
        // Every control character survives the trip.
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = Vec::new();
        let mut stream = Utf8Stream::default();
        push_chunk(
            &mut out,
            Duration::ZERO,
            Code::Output,
            &mut stream,
            all.as_bytes(),
        );
        push_chunk(&mut out, Duration::ZERO, Code::Output, &mut stream, &[0xe2]);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one event");
        let line = String::from_utf8(out).unwrap();
        assert_eq!(parse_event(line.trim_end(), 2).unwrap().data, all);
        assert!(parse_event("[1, \"o\"]", 4).is_err());
        assert!(parse_header(r#"{"version":1,"width":1,"height":1,"timestamp":0}"#).is_err());
    }
}
