//! `warren create`'s environment: `--env NAME=VALUE`, `--env NAME` (the value comes
//! from the caller's environment, so a secret stays out of argv and `ps`) and
//! `--env-file PATH`. No error shows a value: a malformed argument or line may be a
//! secret pasted in the wrong place.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// The variables of `files` (in order), then of the `--env` arguments `args` (a later
/// one wins), with `lookup` reading the caller's environment for `--env NAME`.
pub fn collect(
    files: &[PathBuf],
    args: &[String],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--env-file {}", path.display()))?;
        vars.extend(parse_file(path, &text)?);
    }
    for (i, arg) in args.iter().enumerate() {
        let (name, value) = parse_arg(i + 1, arg, &lookup)?;
        vars.insert(name, value);
    }
    Ok(vars)
}

/// Whether `name` can be an environment variable's name (the gateway refuses others,
/// and names starting with `WARREN_`).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `nth` `--env` argument: `NAME=VALUE`, or `NAME`, whose value `lookup` gives.
fn parse_arg(
    nth: usize,
    arg: &str,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((name, value)) => {
            if !valid_name(name) {
                bail!(
                    "--env (the {}): the part before `=` is not a variable name \
                     ([A-Za-z_][A-Za-z0-9_]*)",
                    ordinal(nth)
                );
            }
            Ok((name.to_owned(), value.to_owned()))
        }
        None => {
            if !valid_name(arg) {
                bail!(
                    "--env (the {}): expected NAME (its value read from your environment) \
                     or NAME=VALUE",
                    ordinal(nth)
                );
            }
            let value = lookup(arg)
                .ok_or_else(|| anyhow!("--env {arg}: {arg} is not set in your environment"))?
                .into_string()
                .map_err(|_| anyhow!("--env {arg}: the value of {arg} is not UTF-8"))?;
            Ok((arg.to_owned(), value))
        }
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix} one")
}

/// The `NAME=VALUE` lines of an env file read from `path`. Blank lines and lines
/// starting with `#` are skipped; a line may start with `export `; a value may be in
/// single or double quotes (taken as is inside them: no escapes, one line). Spaces
/// around an unquoted value are dropped, and a `#` in it is part of it.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed =
            |what: &str| anyhow!("--env-file {}, line {}: {what}", path.display(), i + 1);
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            return Err(malformed("expected NAME=VALUE"));
        };
        let name = name.trim_end();
        if !valid_name(name) {
            return Err(malformed(
                "the part before `=` is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(quote @ ('"' | '\'')) => value
                .strip_prefix(quote)
                .and_then(|v| v.strip_suffix(quote))
                .ok_or_else(|| {
                    malformed("a quoted value must end with its quote, and nothing after it")
                })?,
            _ => value,
        };
        vars.push((name.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn lookup(name: &str) -> Option<OsString> {
        match name {
            "API_KEY" => Some("sk-secret".into()),
            "EMPTY" => Some("".into()),
            _ => None,
        }
    }

    #[test]
    fn env_arguments_are_pairs_or_names_read_from_the_environment() {
        assert_eq!(
            parse_arg(1, "A=b=c", lookup).unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(parse_arg(1, "A=", lookup).unwrap(), ("A".into(), "".into()));
        assert_eq!(
            parse_arg(1, "API_KEY", lookup).unwrap(),
            ("API_KEY".into(), "sk-secret".into())
        );
        assert_eq!(
            parse_arg(1, "EMPTY", lookup).unwrap(),
            ("EMPTY".into(), "".into())
        );
        let unset = parse_arg(1, "NOPE", lookup).unwrap_err().to_string();
        assert!(unset.contains("NOPE is not set"), "{unset}");
        // Something that is no name is not echoed: it may be a misplaced secret.
        for bad in ["sk-live-123", "=sk-live-123", "1A=sk-live-123", ""] {
            let e = parse_arg(2, bad, lookup).unwrap_err().to_string();
            assert!(e.contains("2nd"), "{e}");
            assert!(!e.contains("sk-live") && !e.contains("1A"), "{e}");
        }
        assert_eq!(ordinal(1), "1st one");
        assert_eq!(ordinal(12), "12th one");
        assert_eq!(ordinal(23), "23rd one");
    }

    #[test]
    fn env_files_are_name_value_lines() {
        let text = "\
# a comment
A=1

  B = two words  \r
export C=\"quoted # not a comment\"
export\tD='single \"inner\"'
E=
F=\"\"
G=x#y
exportH=1
H=a=b
";
        assert_eq!(
            parse_file(Path::new(".env"), text).unwrap(),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "quoted # not a comment"),
                ("D", "single \"inner\""),
                ("E", ""),
                ("F", ""),
                ("G", "x#y"),
                ("exportH", "1"),
                ("H", "a=b"),
            ])
        );
    }

    #[test]
    fn a_malformed_env_file_line_is_named_by_number_and_not_echoed() {
        for (text, line) in [
            ("A=1\nsk-live-secret\n", 2),
            ("A=1\n\n# c\nB=\"sk-live-secret\n", 4),
            ("A='sk-live-secret\"\n", 1),
            ("A=\"sk-live\" secret\n", 1),
            ("A=\"\n", 1),
            ("my key=sk-live-secret\n", 1),
            ("export =sk-live-secret\n", 1),
        ] {
            let e = parse_file(Path::new("dir/.env"), text)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("--env-file dir/.env, line {line}: ")),
                "{text:?}: {e}"
            );
            assert!(!e.contains("sk-live") && !e.contains("my key"), "{e}");
        }
    }

    #[test]
    fn files_come_first_and_a_later_value_wins() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.env");
        let two = dir.path().join("two.env");
        std::fs::write(&one, "A=file1\nB=file1\nC=file1\n").unwrap();
        std::fs::write(&two, "B=file2\n").unwrap();
        let vars = collect(
            &[one, two],
            &["C=arg".to_owned(), "API_KEY".to_owned()],
            lookup,
        )
        .unwrap();
        assert_eq!(
            vars.into_iter().collect::<Vec<_>>(),
            pairs(&[
                ("A", "file1"),
                ("API_KEY", "sk-secret"),
                ("B", "file2"),
                ("C", "arg"),
            ])
        );
        let missing = dir.path().join("missing.env");
        let e = format!("{:#}", collect(&[missing], &[], lookup).unwrap_err());
        assert!(e.contains("missing.env"), "{e}");
    }
}
