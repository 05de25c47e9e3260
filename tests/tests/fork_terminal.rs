//! Forks as a person makes them, in a real terminal (tmux) on the Docker backend
//! (issue 26): `ssh alice@gw fork <id> --count 2` and `warren fork <id> --count 2`,
//! then a shell in each fork with OpenSSH, which sees the source's files and is on
//! its own branch. The CLI's `snapshot`, `snapshots`, `create --snapshot`,
//! `snapshots rm` and `config-ssh` run in the same terminal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use warren_keys::SandboxId;
use warren_tests::stack::{DockerStack, image};
use warren_tests::util::wait_until;
use warren_tests::{Profile, Tmux, build_bin, shell_quote};

/// The image (with git).
const BASE: &str = "warren-base:latest";
/// The tmux session the person types into.
const TERM: &str = "t";
/// What a slow fork or login may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(90);

/// The terminal, with `wssh USER [ARGS…]` (OpenSSH with the test's key to the
/// gateway) and `warren` on its PATH.
struct Terminal {
    tmux: Tmux,
    /// Commands typed so far: each ends with its own marker.
    typed: std::cell::Cell<usize>,
}

impl Terminal {
    fn start(dir: &Path, d: &DockerStack, api: &str, key: &str) -> Result<Terminal> {
        // The client's options but its user: `wssh` takes that first.
        let mut options = Vec::new();
        let mut args = d.client.ssh_args().into_iter();
        while let Some(arg) = args.next() {
            if arg == "-o" {
                let value = args.next().unwrap_or_default();
                if !value.starts_with("User=") {
                    options.extend(["-o".to_owned(), value]);
                }
            } else {
                options.push(arg);
            }
        }
        let quoted: Vec<String> = options.iter().map(|a| shell_quote(a)).collect();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        let wssh = bin.join("wssh");
        std::fs::write(
            &wssh,
            format!(
                "#!/bin/sh\nu=$1; shift\nexec ssh {} -l \"$u\" 127.0.0.1 \"$@\"\n",
                quoted.join(" ")
            ),
        )?;
        std::fs::set_permissions(&wssh, std::fs::Permissions::from_mode(0o755))?;
        let warren = build_bin("warren-cli", "warren", Profile::Debug)?;
        std::os::unix::fs::symlink(&warren, bin.join("warren"))?;
        let tmux = Tmux::new();
        let shell = format!(
            "env -u SSH_AUTH_SOCK PATH={}:$PATH WARREN_URL={api} WARREN_API_KEY={key} \
             PS1='$ ' HOME={} bash --norc --noprofile",
            bin.display(),
            dir.display()
        );
        tmux.start(TERM, 160, 45, &["sh".to_owned(), "-c".to_owned(), shell])?;
        Ok(Terminal {
            tmux,
            typed: std::cell::Cell::new(0),
        })
    }

    fn screen(&self) -> String {
        self.tmux.screen(TERM).unwrap_or_default()
    }

    /// Clears the screen, types `line`, and waits for it to finish; the screen,
    /// which must say it exited 0.
    fn run(&self, line: &str) -> Result<String> {
        let n = self.typed.get() + 1;
        self.typed.set(n);
        // The marker's text differs from what is typed, and from earlier ones.
        let marker = format!("done-{n}=");
        self.tmux.keys(
            TERM,
            &["-l", &format!("clear; {line}; echo \"done-$(({n}))=$?\"")],
        )?;
        self.tmux.keys(TERM, &["Enter"])?;
        let mut screen = String::new();
        let done = wait_until(WAIT, || {
            screen = self.screen();
            screen.lines().any(|l| l.starts_with(&marker))
        });
        ensure!(done, "`{line}` did not finish:\n{screen}");
        ensure!(
            screen.contains(&format!("{marker}0")),
            "`{line}` failed:\n{screen}"
        );
        Ok(screen)
    }

    /// Opens a shell in `sandbox` with `wssh <id>`, has it show the files and
    /// branch, and exits it: what it showed.
    fn shell_in(&self, sandbox: &str) -> Result<String> {
        self.tmux
            .keys(TERM, &["-l", &format!("clear; wssh {sandbox}")])?;
        self.tmux.keys(TERM, &["Enter"])?;
        ensure!(
            wait_until(WAIT, || self.foreground().is_ok_and(|c| c == "ssh")),
            "ssh never started:\n{}",
            self.screen()
        );
        self.tmux.keys(
            TERM,
            &[
                "-l",
                "cat /workspace/prepared.txt; git -C /workspace rev-parse --abbrev-ref HEAD; \
                 echo seen=$((6*7))",
            ],
        )?;
        self.tmux.keys(TERM, &["Enter"])?;
        let mut screen = String::new();
        let seen = wait_until(WAIT, || {
            screen = self.screen();
            screen.contains("seen=42")
        });
        ensure!(seen, "the shell in {sandbox} showed nothing:\n{screen}");
        self.tmux.keys(TERM, &["-l", "exit"])?;
        self.tmux.keys(TERM, &["Enter"])?;
        ensure!(
            wait_until(WAIT, || self.foreground().is_ok_and(|c| c != "ssh")),
            "the shell in {sandbox} did not exit:\n{}",
            self.screen()
        );
        Ok(screen)
    }

    /// The program in the terminal's foreground.
    fn foreground(&self) -> Result<String> {
        Ok(self
            .tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                TERM,
                "#{pane_current_command}",
            ])?
            .trim()
            .to_owned())
    }
}

/// The sandbox ids a screen shows at the start of its lines.
fn ids_on(screen: &str) -> Vec<String> {
    screen
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|word| word.starts_with("sbx-") && SandboxId::parse(word).is_ok())
        .map(str::to_owned)
        .collect()
}

/// A fork's shell saw the source's file and its own branch.
fn saw_the_source(screen: &str, fork: &str, branch: &str) -> Result<()> {
    ensure!(
        screen.lines().any(|l| l.trim() == "prepared") && screen.contains(branch),
        "the shell in {fork} did not see the source's file and branch {branch}:\n{screen}"
    );
    Ok(())
}

#[test]
fn forks_from_the_console_and_the_cli_open_in_a_terminal() -> Result<()> {
    let Some(d) = DockerStack::start(&["--disk-mb", "512"])? else {
        return Ok(());
    };
    image("build-base")?;
    let stack = &d.stack;
    let api = stack.api(Duration::from_secs(1))?;
    let key = stack
        .rt
        .block_on(stack.store.create_api_key(&d.owner.id, "cli"))?;
    let key = key.secret.expose().to_owned();

    // The prepared source: a commit and a file in its workspace.
    let made = stack.call(
        &api,
        "POST",
        "/v1/sandboxes",
        Some(key.as_str()),
        Some(json!({"image": BASE})),
    )?;
    ensure!(made.status == 201, "create: {}", made.text);
    let source = made.json()["id"].as_str().context("id")?.to_owned();
    d.client
        .clone()
        .with_target(stack.target(&SandboxId::parse(&source)?))
        .exec(
            "cd /workspace && git init -q && git config user.email t@example.com && \
             git config user.name T && echo prepared > prepared.txt && git add -A && \
             git commit -qm prepared",
        )
        .timeout(WAIT)
        .run()?
        .success()?;

    let dir = tempfile::TempDir::new()?;
    let t = Terminal::start(dir.path(), &d, &api.base, &key)?;

    // The console: one fork id a line, then a shell in each.
    let screen = t.run(&format!("wssh alice fork {source} --count 2"))?;
    let console_forks = ids_on(&screen);
    ensure!(console_forks.len() == 2, "the console's fork:\n{screen}");
    for fork in &console_forks {
        let seen = t.shell_in(fork)?;
        saw_the_source(&seen, fork, &format!("warren/{fork}"))?;
    }

    // The CLI: a table of forks with their branches and ssh lines.
    let screen = t.run(&format!(
        "warren fork {source} --count 2 --branch-prefix try"
    ))?;
    println!("warren fork:\n{screen}");
    ensure!(
        screen.contains("2 forks from") && screen.contains("BRANCH"),
        "{screen}"
    );
    let cli_forks: Vec<String> = ids_on(&screen)
        .into_iter()
        .filter(|id| *id != source)
        .collect();
    ensure!(cli_forks.len() == 2, "the CLI's fork:\n{screen}");
    for (n, fork) in cli_forks.iter().enumerate() {
        let seen = t.shell_in(fork)?;
        saw_the_source(&seen, fork, &format!("try-{}", n + 1))?;
    }

    // Snapshots through the CLI: take, list, make a sandbox of, delete.
    let screen = t.run(&format!("warren snapshot {source} --name prepared"))?;
    let snapshot = screen
        .split_whitespace()
        .find(|w| w.starts_with("snp_"))
        .context("no snapshot id")?
        .to_owned();
    ensure!(screen.contains("was frozen"), "{screen}");
    let screen = t.run("warren snapshots")?;
    println!("warren snapshots:\n{screen}");
    ensure!(
        screen.contains(&snapshot) && screen.contains("prepared") && screen.contains("UTC ("),
        "{screen}"
    );
    let screen = t.run(&format!("warren create --snapshot {snapshot}"))?;
    let made = ids_on(
        &screen
            .lines()
            .filter_map(|l| l.strip_prefix("sandbox "))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let made = made.first().context("no sandbox made")?.clone();
    let seen = t.shell_in(&made)?;
    saw_the_source(&seen, &made, &format!("warren/{made}"))?;
    t.run(&format!("warren snapshots rm {snapshot}"))?;
    let screen = t.run("warren snapshots --json")?;
    ensure!(!screen.contains(&snapshot), "still listed:\n{screen}");

    // The forks are sandboxes like any other: `warren list` shows them.
    let screen = t.run("warren list")?;
    for id in console_forks.iter().chain(&cli_forks).chain([&made]) {
        ensure!(
            screen.contains(id.as_str()),
            "{id} is not listed:\n{screen}"
        );
    }
    // `warren config-ssh` writes a Host entry for each fork, as for any sandbox.
    t.run("warren config-ssh")?;
    let config = std::fs::read_to_string(dir.path().join(".ssh/config"))?;
    for id in console_forks.iter().chain(&cli_forks) {
        ensure!(
            config.contains(&format!("Host {id}")),
            "no Host entry for {id}:\n{config}"
        );
    }
    Ok(())
}
