//! Tenant text made safe for a person's terminal: what a sandbox or a shared user
//! chose (a command line, an image name, a runner's reason) is printed by the
//! gateway outside the sandbox's own session, where a raw `ESC ] 52` would write the
//! viewer's clipboard and a device query would type into their shell.
//!
//! Every C0 control, DEL and every C1 control (U+0080..U+009F, which terminals may
//! act on as 8-bit controls) becomes `\u00XX`. That form is also a JSON escape of the
//! same character, so output that is JSON stays valid JSON meaning the same thing.
//! Not for a sandbox's own session (relayed as it is) nor for `replay`, which
//! filters sequences instead ([`crate::recordings::filter`]).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a terminal may act on `c` rather than show it.
pub fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// `text` with every control character escaped, newlines and tabs included: one
/// field (a name, a command line) that must stay on its line.
pub fn field(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// `text` with every control character escaped except newlines and tabs: whole
/// output whose lines are the gateway's own.
pub fn output(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_control(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_control(c) && !keep(c) {
            // Writing into a String cannot fail.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let osc52 = "x\x1b]52;c;ZWNobyBldmls\x07y";
        assert_eq!(field(osc52), "x\\u001b]52;c;ZWNobyBldmls\\u0007y");
        assert_eq!(
            field("a\nb\tc\rd\x7fe\u{9b}6n"),
            "a\\u000ab\\u0009c\\u000dd\\u007fe\\u009b6n"
        );
        assert_eq!(output("a\nb\tc\x1b[2J\n"), "a\nb\tc\\u001b[2J\n");
        assert!(matches!(field("plain ☃ text"), Cow::Borrowed(_)));
        // U+00A0 and beyond are printable.
        assert_eq!(field("\u{a0}é"), "\u{a0}é");
    }

    #[test]
    fn json_stays_json_with_the_same_meaning() {
        let value = serde_json::json!({"command": "a\u{9b}31m\x7f\x1b]0;t\x07\\", "n": 1});
        let text = serde_json::to_string_pretty(&value).unwrap();
        // serde escapes C0 but leaves DEL and C1 raw; the door escapes them too.
        assert!(text.contains('\u{9b}') && text.contains('\x7f'));
        let safe = output(&text);
        assert!(!safe.chars().any(|c| is_control(c) && c != '\n'));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }
}
