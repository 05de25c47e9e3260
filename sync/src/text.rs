//! Sandbox-chosen text made safe for a person's terminal. A file name, a link's
//! text or an error message from a sandbox may carry escape sequences (`ESC ] 52`
//! writes the clipboard, others retitle or query the terminal); whatever of it is
//! printed goes through [`escape_controls`] first. Not for JSON output (serde
//! escapes what JSON needs) nor for names handed to programs.

use std::borrow::Cow;

/// `text` with every C0 control, DEL and C1 control (U+0080–U+009F) written as a
/// visible escape (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`), the bidirectional
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069, which reorder what a reader
/// sees) as `\u{…}`, and a backslash doubled so that an escape cannot be faked.
/// Borrowed when there is nothing to escape.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1f | 0x7f..=0x9f | 0x202a..=0x202e | 0x2066..=0x2069)
        || c == '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_not_sent() {
        assert!(matches!(
            escape_controls("plain/name.txt"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("\x1b]52;c;aGVsbG8=\x07"),
            "\\x1b]52;c;aGVsbG8=\\x07"
        );
        assert_eq!(escape_controls("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(escape_controls("\u{9b}31m\x7f"), "\\u{9b}31m\\x7f");
        assert_eq!(
            escape_controls("evil\u{202e}txt.exe"),
            "evil\\u{202e}txt.exe"
        );
        // A literal backslash cannot pass for an escape.
        assert_eq!(escape_controls("\\x1b"), "\\\\x1b");
        // Other text, wide or accented, is kept.
        assert_eq!(escape_controls("été/日本"), "été/日本");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let shown = escape_controls(&c.to_string()).into_owned();
            assert!(shown.chars().all(|c| (' '..='~').contains(&c)), "{shown:?}");
        }
    }
}
