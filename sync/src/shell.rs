//! Words for a POSIX shell: what `warren sync` and `warren mirror` put on an exec
//! channel's command line (the sandbox's paths), and what the end-to-end tests show
//! of the commands they run. Quoting is `shlex`'s, not ours.

/// `word` as one POSIX shell word: unchanged when it holds nothing a shell reads
/// specially, else quoted. A NUL byte, which no shell word can hold, is passed
/// through quoted (the exec then fails on it; it cannot split the word).
pub fn shell_quote(word: &str) -> String {
    match shlex::Quoter::new().allow_nul(true).quote(word) {
        Ok(quoted) => quoted.into_owned(),
        // `allow_nul(true)` leaves shlex no error to return.
        Err(_) => "''".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_a_shell_would_read() {
        assert_eq!(shell_quote("/workspace/dir"), "/workspace/dir");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        for word in [
            "it's",
            "$(reboot)",
            "a;b",
            "`x`",
            "~root",
            "-n",
            "a\nb",
            "*",
        ] {
            let quoted = shell_quote(word);
            let split = shlex::split(&quoted).unwrap_or_default();
            assert_eq!(split, [word], "{word:?} as {quoted:?}");
        }
    }
}
