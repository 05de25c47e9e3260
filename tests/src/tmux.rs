//! Real terminals for tests that must see a screen, not a byte log: each test gets
//! a tmux server of its own (its own socket), and each client runs in a tmux session
//! there, so the test can type, read the screen as a person sees it, and find the
//! client's pid to kill it.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A tmux server of the test's own, killed on drop; nothing of the user's is touched.
pub struct Tmux {
    socket: String,
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

impl Tmux {
    pub fn new() -> Tmux {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        Tmux {
            socket: format!("warren-test-{}-{n}", std::process::id()),
        }
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .context("tmux (scripts/test installs it)")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `argv` in a new tmux session `name` on a `cols`×`rows` terminal.
    pub fn start(&self, name: &str, cols: u16, rows: u16, argv: &[String]) -> Result<()> {
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &cols,
            "-y",
            &rows,
            "--",
        ];
        args.extend(argv.iter().map(String::as_str));
        self.run(&args)?;
        // Keep the pane (and its last screen) when its program exits.
        self.run(&["set-option", "-t", name, "remain-on-exit", "on"])?;
        Ok(())
    }

    /// What session `name` shows now, one line per row.
    pub fn screen(&self, name: &str) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    /// Waits until `name`'s screen shows `text`; an error with the screen otherwise.
    pub fn wait_for(&self, name: &str, text: &str) -> Result<String> {
        self.wait_until(name, &format!("{text:?}"), |screen| screen.contains(text))
    }

    /// Waits until `name`'s screen satisfies `ok` (within 20 s).
    pub fn wait_until(&self, name: &str, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen(name)?;
            if ok(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!("the terminal {name} never showed {what}; it shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `keys` into `name` (tmux key names: "Enter", "C-c", or literal text).
    pub fn keys(&self, name: &str, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args)?;
        Ok(())
    }

    /// The pid of the program running in `name`'s pane.
    pub fn pane_pid(&self, name: &str) -> Result<u32> {
        let out = self.run(&["display-message", "-p", "-t", name, "#{pane_pid}"])?;
        out.trim()
            .parse()
            .with_context(|| format!("pane pid {out:?}"))
    }

    /// Whether `name`'s program has exited (its pane is kept, dead).
    pub fn pane_dead(&self, name: &str) -> Result<bool> {
        let out = self.run(&["display-message", "-p", "-t", name, "#{pane_dead}"])?;
        Ok(out.trim() == "1")
    }
}

impl Default for Tmux {
    fn default() -> Self {
        Tmux::new()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}
