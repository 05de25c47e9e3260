//! The console's commands: parsed with clap from the words of an SSH command line,
//! run against the [`Lifecycle`] as the logged-in account, answered as text or
//! (`--json`) the HTTP API's JSON shapes.
//!
//! Tables escape each field a tenant chose ([`crate::escape::field`]), so a name
//! or command line stays on its own line; the console escapes whatever else it
//! prints on the way out.
//!
//! Exit codes: 0 done, 1 refused or failed (the lifecycle's message on stderr, or
//! `{"error":{"code","message"}}` with `--json`), 2 a bad command line.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde::Serialize;
use warren_store::{Sandbox, SandboxQuery, User};

use super::tables::{sandbox_table, session_table, share_table};
use crate::escape::field;
use crate::lifecycle::audit::OpenRecording;
use crate::lifecycle::pulls::CreatePullRequest;
use crate::lifecycle::{CreateSandbox, Error, Lifecycle};
use crate::recordings::replay::ReplayOptions;
use crate::views::{self, CreatedSandbox, NewToken, SessionList, SessionView, SshKeyList};

/// Exit status of a command the lifecycle refused or that failed.
pub const EXIT_REFUSED: u32 = 1;
/// Exit status of a command line that does not parse.
pub const EXIT_USAGE: u32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "ssh <account>@gateway",
    no_binary_name = true,
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    about = "Warren's SSH console: your sandboxes, with nothing but ssh.",
    after_help = "Reach a sandbox: ssh <sandbox-id>@gateway (or ssh -J <account>@gateway <sandbox-id>)."
)]
pub struct Line {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists your sandboxes, newest first.
    Ls {
        /// Also list deleted sandboxes.
        #[arg(long)]
        all: bool,
        /// The API's JSON (`GET /v1/sandboxes`).
        #[arg(long)]
        json: bool,
    },
    /// Creates a sandbox and prints its id (with a terminal, `ssh -t`, opens its shell).
    New {
        /// An image reference (default: the runner's base image).
        #[arg(long)]
        image: Option<String>,
        /// A repository to clone into the workspace.
        #[arg(long)]
        repo: Option<String>,
        /// The branch made for the sandbox's work (needs --repo).
        #[arg(long)]
        branch: Option<String>,
        /// Let your own `ssh -A` sessions forward your SSH agent into it.
        #[arg(long)]
        forward_agent: bool,
        /// CPUs, 0.1 to 16.
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory in MiB, 128 to 65536.
        #[arg(long)]
        memory_mb: Option<u32>,
        /// Disk quota in MiB, 256 to 1048576 (default: the runner's).
        #[arg(long)]
        disk_mb: Option<u32>,
        /// Environment for every session, NAME=value (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Only create it, even with a terminal.
        #[arg(long)]
        detach: bool,
        /// The API's JSON (`POST /v1/sandboxes`, the token included, shown once).
        #[arg(long)]
        json: bool,
    },
    /// Stops a running sandbox, keeping its workspace.
    Stop { id: String },
    /// Starts a stopped sandbox again.
    Start { id: String },
    /// Deletes a sandbox and its workspace.
    Rm { id: String },
    /// Commits the sandbox's work, pushes it and opens a GitHub pull request.
    Pr {
        id: String,
        /// The pull request's title (also the commit's subject).
        #[arg(long)]
        title: String,
        /// Its description (also the commit's body).
        #[arg(long)]
        body: Option<String>,
        /// The branch to merge into (default: the repository's default branch).
        #[arg(long)]
        base: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lists the SSH sessions of a sandbox, oldest first, with what each ran and
    /// which terminal sessions were recorded.
    Sessions {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Plays a recorded terminal session back (q or ctrl-c stops it).
    Replay {
        /// The session's id (`ses_…`, from `sessions`).
        session: String,
        /// Which of its channels (default: its first recorded one).
        #[arg(long)]
        channel: Option<u32>,
        /// Play faster (2) or slower (0.5), 0.01 to 1000.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Shorten pauses to at most this many seconds.
        #[arg(long, default_value_t = 2.0)]
        idle_limit: f64,
    },
    /// Lists your SSH keys; `keys add` registers the public key read on stdin.
    Keys {
        #[command(subcommand)]
        action: Option<KeysAction>,
        #[arg(long)]
        json: bool,
    },
    /// Opens the shell of one of your sandboxes (needs a terminal: ssh -t).
    Attach { id: String },
    /// Forks a running sandbox into new ones, each on its own git branch, and prints
    /// their ids (with a terminal, `ssh -t`, opens the first one's shell).
    /// Processes are not carried over.
    Fork {
        id: String,
        /// How many forks, 1 to 16.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Each fork's branch is `<prefix>-<n>` (default `warren/<fork-id>`).
        #[arg(long)]
        branch_prefix: Option<String>,
        /// Only fork it, even with a terminal.
        #[arg(long)]
        detach: bool,
        /// The API's JSON (`POST /v1/sandboxes/{id}/fork`, tokens included).
        #[arg(long)]
        json: bool,
    },
    /// Snapshots a running sandbox's file system; prints the snapshot's id.
    Snapshot {
        id: String,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lets another account ssh into your sandbox (relay and jump mode); sharing
    /// again updates --secrets.
    Share {
        id: String,
        /// The account name to share with.
        user: String,
        /// Their sessions also get the sandbox's create-time environment (its
        /// secrets, e.g. GITHUB_TOKEN).
        #[arg(long)]
        secrets: bool,
        /// The API's JSON (`POST /v1/sandboxes/{id}/shares`).
        #[arg(long)]
        json: bool,
    },
    /// Takes a share back; that account's logins to the sandbox end.
    Unshare {
        id: String,
        /// The account name it is shared with.
        user: String,
    },
    /// Lists who your sandbox is shared with (* after a name: with its secrets).
    Shares {
        id: String,
        /// The API's JSON (`GET /v1/sandboxes/{id}/shares`).
        #[arg(long)]
        json: bool,
    },
    /// Revokes every token of your sandbox handed out so far and prints a new one
    /// (shown once); logins with the old ones end.
    Token {
        id: String,
        /// The API's JSON (`POST /v1/sandboxes/{id}/token`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Registers the OpenSSH public key line read on stdin.
    Add {
        /// Its name (default: the key's comment).
        #[arg(long)]
        name: Option<String>,
    },
    /// Removes a key, by id (`ssk-…`) or fingerprint (`SHA256:…`).
    Rm { key: String },
}

impl Command {
    /// Whether this command reads stdin (`keys add`).
    pub fn reads_stdin(&self) -> bool {
        matches!(
            self,
            Command::Keys {
                action: Some(KeysAction::Add { .. }),
                ..
            }
        )
    }

    fn json(&self) -> bool {
        match self {
            Command::Ls { json, .. }
            | Command::New { json, .. }
            | Command::Pr { json, .. }
            | Command::Sessions { json, .. }
            | Command::Keys { json, .. }
            | Command::Fork { json, .. }
            | Command::Snapshot { json, .. }
            | Command::Share { json, .. }
            | Command::Shares { json, .. }
            | Command::Token { json, .. } => *json,
            _ => false,
        }
    }
}

/// What a command printed, how it ended, and whether it leads into a sandbox.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
    /// Open this sandbox's shell next (`new` or `attach` with a terminal).
    pub attach: Option<Sandbox>,
    /// Play this recording next (`replay`).
    pub replay: Option<Replay>,
}

/// A recording to play, and how.
#[derive(Debug)]
pub struct Replay {
    pub recording: OpenRecording,
    pub options: ReplayOptions,
}

impl Outcome {
    fn out(stdout: String) -> Outcome {
        Outcome {
            stdout,
            ..Outcome::default()
        }
    }
}

/// Parses one command line: the command, or the outcome of a line that is not one
/// (help is printed with status 0, mistakes with [`EXIT_USAGE`]).
pub fn parse(line: &str) -> Result<Command, Box<Outcome>> {
    let Some(words) = shlex::split(line) else {
        return Err(Box::new(Outcome {
            stderr: "error: unbalanced quotes in the command line\n".into(),
            status: EXIT_USAGE,
            ..Outcome::default()
        }));
    };
    let words = if words.is_empty() {
        vec!["help".to_owned()]
    } else {
        words
    };
    match Line::try_parse_from(words) {
        Ok(line) => Ok(line.command),
        Err(e) => {
            let text = e.render().to_string();
            Err(Box::new(if e.use_stderr() {
                Outcome {
                    stderr: text,
                    status: EXIT_USAGE,
                    ..Outcome::default()
                }
            } else {
                Outcome::out(text)
            }))
        }
    }
}

/// Runs `command` as `user`. `stdin` is what was read for commands that read it;
/// `terminal` says whether the session has one (then `new` opens the shell);
/// `progress` gets lines to show while it runs (`new --repo`'s).
pub async fn run(
    lifecycle: &Arc<Lifecycle>,
    user: &User,
    command: Command,
    stdin: &[u8],
    terminal: bool,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Outcome {
    let json = command.json();
    match execute(lifecycle, user, command, stdin, terminal, progress).await {
        Ok(outcome) => outcome,
        Err(e) => refused(&e, json),
    }
}

fn refused(e: &Error, json: bool) -> Outcome {
    let stderr = if json {
        let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
        format!("{body}\n")
    } else {
        format!("error: {} ({})\n", e.message, e.code)
    };
    Outcome {
        stderr,
        status: EXIT_REFUSED,
        ..Outcome::default()
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Our own view types always serialize.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

async fn execute(
    lc: &Arc<Lifecycle>,
    user: &User,
    command: Command,
    stdin: &[u8],
    terminal: bool,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Outcome, Error> {
    Ok(match command {
        Command::Ls { all, json } => {
            let query = SandboxQuery {
                limit: SandboxQuery::MAX_LIMIT,
                after: None,
                include_deleted: all,
            };
            let page = lc.list(user, &query).await?;
            if json {
                Outcome::out(to_json(&views::sandbox_list(lc, &page)))
            } else {
                Outcome::out(sandbox_table(&page.sandboxes))
            }
        }
        Command::New {
            image,
            repo,
            branch,
            forward_agent,
            cpus,
            memory_mb,
            disk_mb,
            env,
            detach,
            json,
        } => {
            let mut vars = std::collections::BTreeMap::new();
            for entry in env {
                let Some((name, value)) = entry.split_once('=') else {
                    return Err(Error::invalid("--env takes NAME=value"));
                };
                vars.insert(name.to_owned(), value.to_owned());
            }
            let body = CreateSandbox {
                image,
                repo,
                branch,
                forward_agent,
                env: vars,
                cpus,
                memory_mb,
                disk_mb,
                ..CreateSandbox::default()
            };
            // From a repository, watched as it goes (not for --json: one answer).
            let created = if body.repo.is_some() && !json {
                super::watched::watched_create(lc, user, body, &progress).await?
            } else {
                lc.create(user, body).await?
            };
            let mut outcome = if json {
                Outcome::out(to_json(&CreatedSandbox {
                    sandbox: views::sandbox_view(lc, &created.sandbox),
                    token: created.token.expose().to_owned(),
                }))
            } else {
                Outcome::out(format!("{}\n", created.sandbox.id))
            };
            if terminal && !detach && !json {
                outcome.attach = Some(created.sandbox);
            }
            outcome
        }
        Command::Fork {
            id,
            count,
            branch_prefix,
            detach,
            json,
        } => {
            let body = crate::lifecycle::snapshots::ForkSandbox {
                count,
                branch_prefix,
            };
            super::fork::fork(lc, user, &id, body, json, terminal && !detach).await?
        }
        Command::Snapshot { id, name, json } => {
            super::fork::snapshot(lc, user, &id, name, json).await?
        }
        Command::Stop { id } => {
            let sandbox = lc.stop(user, &id).await?;
            Outcome::out(format!("{} {}\n", sandbox.id, sandbox.state))
        }
        Command::Start { id } => {
            let sandbox = lc.start(user, &id).await?;
            Outcome::out(format!("{} {}\n", sandbox.id, sandbox.state))
        }
        Command::Rm { id } => {
            lc.delete(user, &id).await?;
            Outcome::out(format!("{id} deleted\n"))
        }
        Command::Pr {
            id,
            title,
            body,
            base,
            json,
        } => {
            let request = CreatePullRequest { title, body, base };
            let pull = lc.open_pull(user, &id, request).await?;
            if json {
                Outcome::out(to_json(&pull))
            } else {
                Outcome::out(format!("{}\n", pull.url))
            }
        }
        Command::Replay {
            session,
            channel,
            speed,
            idle_limit,
        } => {
            if !(0.01..=1000.0).contains(&speed) {
                return Err(Error::invalid("--speed is from 0.01 to 1000"));
            }
            if !(idle_limit > 0.0 && idle_limit <= 86_400.0) {
                return Err(Error::invalid("--idle-limit is from 0 to 86400 seconds"));
            }
            let recording = lc.recording(user, &session, channel).await?;
            Outcome {
                replay: Some(Replay {
                    recording,
                    options: ReplayOptions {
                        speed,
                        idle_limit: std::time::Duration::from_secs_f64(idle_limit),
                    },
                }),
                ..Outcome::default()
            }
        }
        Command::Sessions { id, json } => {
            let sessions = lc.ssh_sessions(user, &id).await?;
            let views: Vec<SessionView> = sessions.iter().map(views::session_view).collect();
            if json {
                Outcome::out(to_json(&SessionList { sessions: views }))
            } else {
                Outcome::out(session_table(&views))
            }
        }
        Command::Keys { action, json } => match action {
            None => {
                let keys = lc.ssh_keys(user).await?;
                if json {
                    Outcome::out(to_json(&SshKeyList {
                        ssh_keys: keys.iter().map(views::ssh_key_view).collect(),
                    }))
                } else {
                    let mut text = String::new();
                    for k in &keys {
                        text.push_str(&format!(
                            "{}  {}  {}\n",
                            k.id,
                            k.fingerprint,
                            field(&k.name)
                        ));
                    }
                    Outcome::out(text)
                }
            }
            Some(KeysAction::Add { name }) => {
                let line = std::str::from_utf8(stdin)
                    .map_err(|_| Error::invalid("the public key on stdin is not UTF-8"))?;
                let key = lc.add_ssh_key(user, line, name).await?;
                if json {
                    Outcome::out(to_json(&views::ssh_key_view(&key)))
                } else {
                    Outcome::out(format!(
                        "{}  {}  {}\n",
                        key.id,
                        key.fingerprint,
                        field(&key.name)
                    ))
                }
            }
            Some(KeysAction::Rm { key }) => {
                lc.remove_ssh_key(user, &key).await?;
                Outcome::out(format!("{key} removed\n"))
            }
        },
        Command::Share {
            id,
            user: name,
            secrets,
            json,
        } => {
            let names = lc.share(user, &id, &name, secrets).await?;
            if json {
                Outcome::out(to_json(&views::share_list(names)))
            } else {
                Outcome::out(share_table(&names))
            }
        }
        Command::Unshare { id, user: name } => {
            lc.unshare(user, &id, &name).await?;
            Outcome::out(format!("{id} is no longer shared with {}\n", field(&name)))
        }
        Command::Shares { id, json } => {
            let names = lc.shares(user, &id).await?;
            if json {
                Outcome::out(to_json(&views::share_list(names)))
            } else {
                Outcome::out(share_table(&names))
            }
        }
        Command::Token { id, json } => {
            let token = lc.rotate_token(user, &id).await?;
            if json {
                Outcome::out(to_json(&NewToken {
                    token: token.expose().to_owned(),
                }))
            } else {
                Outcome::out(format!("{}\n", token.expose()))
            }
        }
        Command::Attach { id } => {
            if !terminal {
                return Err(Error::bad_request(
                    "attach needs a terminal: ssh -t; or log in as <sandbox-id>@gateway",
                ));
            }
            let sandbox = lc.managed(user, &id).await?;
            Outcome {
                attach: Some(sandbox),
                ..Outcome::default()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_parse_or_say_why() {
        assert!(matches!(
            parse("ls --json"),
            Ok(Command::Ls { json: true, .. })
        ));
        assert!(matches!(
            parse("new --image 'warren-base:latest' --env A=1 --env B=2"),
            Ok(Command::New { env, .. }) if env.len() == 2
        ));
        assert!(parse("keys add --name laptop").is_ok_and(|c| c.reads_stdin()));
        assert!(parse("stop").is_err_and(|o| o.status == EXIT_USAGE && !o.stderr.is_empty()));
        assert!(parse("frobnicate").is_err_and(|o| o.status == EXIT_USAGE));
        assert!(matches!(
            parse("share sbx-abc bob --secrets"),
            Ok(Command::Share { secrets: true, ref user, .. }) if user == "bob"
        ));
        assert!(matches!(
            parse("unshare sbx-abc bob"),
            Ok(Command::Unshare { .. })
        ));
        assert!(matches!(
            parse("shares sbx-abc --json"),
            Ok(Command::Shares { json: true, .. })
        ));
        assert!(matches!(
            parse("token sbx-abc"),
            Ok(Command::Token { json: false, .. })
        ));
        assert!(parse("share sbx-abc").is_err_and(|o| o.status == EXIT_USAGE));
        assert!(parse("new --image 'unbalanced").is_err_and(|o| o.status == EXIT_USAGE));
        // Help is an answer, not a mistake: on stdout, status 0.
        for line in [
            "help",
            "",
            "--help",
            "new --help",
            "share --help",
            "token --help",
        ] {
            let Err(o) = parse(line) else {
                panic!("{line:?} parsed as a command");
            };
            assert_eq!(o.status, 0, "{line:?}");
            assert!(o.stdout.contains("Usage"), "{line:?}: {}", o.stdout);
        }
    }
}
