//! The account console: `ssh alice@gateway <command>` runs a lifecycle command as
//! alice (the same [`Lifecycle`] as the HTTP API: same checks, same errors), and
//! `ssh -t alice@gateway` opens a small interactive console. `new` and `attach`
//! with a terminal continue into the sandbox's shell on the same channel, relayed
//! like a `<sandbox-id>@` login.
//!
//! A console session channel lives here from its `exec` or `shell` request on; the
//! connection ([`super::relay`]) only hands it over and passes window changes on.

pub mod commands;
mod editor;
mod fork;
mod tables;
mod watched;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf, Pty};
use tokio::sync::{mpsc, watch};
use warren_keys::Scope;
use warren_store::{ChannelKind, NewSshSession, Sandbox, SandboxState, SessionEnd, User};

use self::commands::{EXIT_REFUSED, Outcome, Replay};
use self::editor::{Edit, LineEditor};
use super::FrontDoor;
use super::channel_audit::{ChannelAudit, Program, Terminal};
use super::pipe::{self, Grant};
use super::upstream::{self, AgentEvents};
use crate::lifecycle::Lifecycle;
use crate::recordings::asciicast::Header;
use crate::recordings::filter::ReplayFilter;
use crate::recordings::replay;

/// The most stdin a command reads (`keys add`: one public key line).
const MAX_STDIN: usize = 16 * 1024;
/// Lifetime of the token the console logs in to an agent with.
const UPSTREAM_TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long the agent may take to answer the shell's requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PROMPT: &str = "warren> ";

/// The terminal a client asked for, to ask the same of an agent.
#[derive(Debug, Clone)]
pub struct PtyParams {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub pix_width: u32,
    pub pix_height: u32,
    pub modes: Vec<(Pty, u32)>,
}

/// A window size: columns, rows, pixel width, pixel height.
pub type WindowSize = (u32, u32, u32, u32);

/// What a console session needs of its connection.
pub struct Context {
    pub lifecycle: Arc<Lifecycle>,
    pub door: Arc<FrontDoor>,
    pub user: User,
    pub peer: SocketAddr,
    /// The user's connection, and window grants on it.
    pub handle: russh::server::Handle,
    pub grant: Grant,
}

/// A session channel of an account login, before its `exec` or `shell`.
pub struct ConsoleChannel {
    id: ChannelId,
    input: mpsc::UnboundedReceiver<ChannelMsg>,
    output: ChannelWriteHalf<Msg>,
    pty: Option<PtyParams>,
    windows: watch::Receiver<Option<WindowSize>>,
}

impl ConsoleChannel {
    /// Takes over `channel`; window changes reach it through the returned sender.
    pub fn new(channel: Channel<Msg>) -> (ConsoleChannel, watch::Sender<Option<WindowSize>>) {
        let id = channel.id();
        let (read, output) = channel.split();
        let (windows_tx, windows) = watch::channel(None);
        let console = ConsoleChannel {
            id,
            input: pipe::drain(read, None),
            output,
            pty: None,
            windows,
        };
        (console, windows_tx)
    }

    pub fn set_pty(&mut self, pty: PtyParams) {
        self.pty = Some(pty);
    }

    /// Runs one command line, then closes the channel (or opens a shell).
    pub fn exec(self, ctx: Context, line: String) {
        tokio::spawn(async move {
            let mut me = self;
            let outcome = match commands::parse(&line) {
                Err(outcome) => *outcome,
                Ok(command) => {
                    let stdin = if command.reads_stdin() {
                        match me.read_stdin(&ctx).await {
                            Some(bytes) => bytes,
                            None => {
                                let outcome = Outcome {
                                    stderr: format!("error: stdin is over {MAX_STDIN} bytes\n"),
                                    status: EXIT_REFUSED,
                                    ..Outcome::default()
                                };
                                me.finish(ctx, outcome).await;
                                return;
                            }
                        }
                    } else {
                        Vec::new()
                    };
                    let terminal = me.pty.is_some();
                    me.run_printing(&ctx, command, &stdin, terminal).await
                }
            };
            me.finish(ctx, outcome).await;
        });
    }

    /// The interactive console (with a terminal), or commands read line by line
    /// from stdin (without one).
    pub fn shell(self, ctx: Context) {
        tokio::spawn(async move {
            let me = self;
            if me.pty.is_some() {
                let banner = format!(
                    "Warren console for {}. Type help for the commands, exit to leave.\n",
                    ctx.user.name
                );
                me.print(&banner).await;
            }
            me.repl(ctx).await;
        });
    }

    async fn repl(mut self, ctx: Context) {
        let terminal = self.pty.is_some();
        let mut editor = LineEditor::default();
        if terminal {
            self.print(PROMPT).await;
        }
        while let Some(msg) = self.input.recv().await {
            let data = match msg {
                ChannelMsg::Data { data } => data,
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => continue,
            };
            (ctx.grant)(self.id, u32::try_from(data.len()).unwrap_or(u32::MAX));
            for (at, byte) in data.iter().copied().enumerate() {
                let edit = editor.feed(byte, terminal);
                if !edit.echo.is_empty() {
                    let _ = self.output.data_bytes(Bytes::from(edit.echo.clone())).await;
                }
                match edit.edit {
                    Edit::None => {}
                    Edit::Cancel => self.print(PROMPT).await,
                    Edit::Quit => {
                        self.close(0).await;
                        return;
                    }
                    Edit::Line(line) => {
                        let line = line.trim().to_owned();
                        if line == "exit" || line == "quit" {
                            self.close(0).await;
                            return;
                        }
                        if !line.is_empty() {
                            let outcome = match commands::parse(&line) {
                                Err(outcome) => *outcome,
                                Ok(command) if command.reads_stdin() => Outcome {
                                    stderr: "error: keys add reads the key from stdin: \
                                             ssh <account>@gateway keys add < key.pub\n"
                                        .into(),
                                    status: EXIT_REFUSED,
                                    ..Outcome::default()
                                },
                                Ok(command) => {
                                    self.run_printing(&ctx, command, &[], terminal).await
                                }
                            };
                            self.print(&outcome.stdout).await;
                            self.print_err(&outcome.stderr).await;
                            if let Some(replay) = outcome.replay {
                                self.replay(&ctx, replay).await;
                            }
                            if let Some(sandbox) = outcome.attach {
                                // What was typed after the line is the shell's.
                                let ahead = data.slice(at + 1..);
                                self.attach(ctx, sandbox, ahead).await;
                                return;
                            }
                        }
                        if terminal {
                            self.print(PROMPT).await;
                        }
                    }
                }
            }
        }
        self.close(0).await;
    }

    /// Runs `command`, printing its progress lines (a `new --repo`'s clone, build
    /// and lifecycle commands) to stderr as they come.
    async fn run_printing(
        &self,
        ctx: &Context,
        command: commands::Command,
        stdin: &[u8],
        terminal: bool,
    ) -> Outcome {
        let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let work = commands::run(&ctx.lifecycle, &ctx.user, command, stdin, terminal, sink);
        tokio::pin!(work);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                Some(line) = lines.recv() => self.print_err(&line).await,
            }
        };
        while let Ok(line) = lines.try_recv() {
            self.print_err(&line).await;
        }
        outcome
    }

    /// Reads stdin to its end; `None` if it is over [`MAX_STDIN`].
    async fn read_stdin(&mut self, ctx: &Context) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        while let Some(msg) = self.input.recv().await {
            match msg {
                ChannelMsg::Data { data } => {
                    (ctx.grant)(self.id, u32::try_from(data.len()).unwrap_or(u32::MAX));
                    bytes.extend_from_slice(&data);
                    if bytes.len() > MAX_STDIN {
                        return None;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        Some(bytes)
    }

    /// Prints `outcome` and ends the channel with its status, or goes on into the
    /// sandbox it names.
    async fn finish(mut self, ctx: Context, outcome: Outcome) {
        self.print(&outcome.stdout).await;
        self.print_err(&outcome.stderr).await;
        if let Some(replay) = outcome.replay {
            let status = self.replay(&ctx, replay).await;
            self.close(status).await;
            return;
        }
        match outcome.attach {
            Some(sandbox) => self.attach(ctx, sandbox, Bytes::new()).await,
            None => self.close(outcome.status).await,
        }
    }

    /// Plays a recording on this channel until its end, or until the user stops it
    /// (q or ctrl-c on a terminal; closing the channel anywhere); the exit status.
    async fn replay(&mut self, ctx: &Context, replay: Replay) -> u32 {
        let terminal = self.pty.as_ref().map(|p| (p.cols, p.rows));
        let (id, grant) = (self.id, ctx.grant.clone());
        let input = &mut self.input;
        let output = &self.output;
        let stopped = async {
            while let Some(msg) = input.recv().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        grant(id, u32::try_from(data.len()).unwrap_or(u32::MAX));
                        if terminal.is_some() && data.iter().any(|b| matches!(b, 3 | 4 | b'q')) {
                            return;
                        }
                    }
                    ChannelMsg::Close => return,
                    // Stdin's end (ssh -n) is no reason to stop.
                    _ => {}
                }
            }
        };
        let note = |h: &Header| match terminal {
            Some((cols, rows)) if cols < h.width || rows < h.height => Some(format!(
                "(recorded on a {}x{} terminal, this one is {cols}x{rows}: widen it for a \
                 faithful replay)\r\n",
                h.width, h.height
            )),
            _ => None,
        };
        let reader = tokio::io::BufReader::new(replay.recording.file);
        let mut filter = ReplayFilter::default();
        let played = replay::play(
            reader,
            replay.options,
            &mut filter,
            note,
            |text| async move { output.data_bytes(Bytes::from(text)).await.is_ok() },
        );
        let result = tokio::select! {
            result = played => Some(result),
            () = stopped => None,
        };
        match result {
            Some(Ok(_)) | None => {
                if terminal.is_some() {
                    // What the session left set (colours, a hidden cursor, the
                    // alternate screen) ends here.
                    let reset = format!("{}\r\n", filter.reset());
                    let _ = output.data_bytes(Bytes::from(reset)).await;
                }
                0
            }
            Some(Err(e)) => {
                self.print_err(&format!("error: {e}\n")).await;
                EXIT_REFUSED
            }
        }
    }

    async fn print(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let _ = self.output.data_bytes(self.terminal_text(text)).await;
    }

    /// stderr as its own stream, except on a terminal (one stream there, as sshd).
    async fn print_err(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let bytes = self.terminal_text(text);
        let _ = if self.pty.is_some() {
            self.output.data_bytes(bytes).await
        } else {
            self.output.extended_data_bytes(1, bytes).await
        };
    }

    /// What the console prints, as the client receives it: control characters
    /// escaped (tenants chose names, command lines and runners' reasons in it; JSON
    /// stays JSON), and `\n` as `\r\n` on a terminal (the client's is raw).
    fn terminal_text(&self, text: &str) -> Bytes {
        let text = crate::escape::output(text);
        if self.pty.is_some() {
            Bytes::from(text.replace('\n', "\r\n"))
        } else {
            Bytes::from(text.into_owned())
        }
    }

    async fn close(&self, status: u32) {
        let _ = self.output.exit_status(status).await;
        let _ = self.output.eof().await;
        let _ = self.output.close().await;
    }

    /// Continues into `sandbox`'s shell on this channel: logs in to its agent as
    /// the owner, asks for the same terminal and a shell, and relays both ways
    /// until the shell ends (recorded in the audit trail like any login).
    async fn attach(self, ctx: Context, sandbox: Sandbox, ahead: Bytes) {
        if sandbox.state != SandboxState::Running {
            let message = format!(
                "error: {} is {}; start it first\n",
                sandbox.id, sandbox.state
            );
            self.print_err(&message).await;
            self.close(EXIT_REFUSED).await;
            return;
        }
        let Some(pty) = self.pty.clone() else {
            self.close(0).await;
            return;
        };
        match self.relay_shell(&ctx, &sandbox, &pty, ahead).await {
            Ok(()) => {}
            Err((me, message)) => {
                me.print_err(&format!("error: {message}\n")).await;
                me.close(EXIT_REFUSED).await;
            }
        }
    }

    async fn relay_shell(
        self,
        ctx: &Context,
        sandbox: &Sandbox,
        pty: &PtyParams,
        ahead: Bytes,
    ) -> Result<(), (ConsoleChannel, String)> {
        let unavailable = |e: &dyn std::fmt::Display| format!("{} is unavailable: {e}", sandbox.id);
        let stream = match ctx.door.dialer.dial(sandbox, ctx.peer).await {
            Ok(stream) => stream,
            Err(e) => return Err((self, unavailable(&e))),
        };
        // The owner's shell, without agent forwarding (the console forwards none).
        let token = ctx
            .lifecycle
            .signer
            .mint(&sandbox.id, Scope::Ssh, UPSTREAM_TOKEN_TTL);
        let events = AgentEvents::new(ctx.handle.clone(), ctx.grant.clone());
        let up = match upstream::connect(stream, sandbox.id.as_str(), &token, events).await {
            Ok(up) => up,
            Err(e) => return Err((self, unavailable(&e))),
        };
        let up_channel = match up.handle.channel_open_session().await {
            Ok(channel) => channel,
            Err(e) => return Err((self, unavailable(&e))),
        };
        let up_id = up_channel.id();
        let (up_read, up_write) = up_channel.split();
        let (replies_tx, mut replies) = mpsc::unbounded_channel();
        let from_agent = pipe::drain(up_read, Some(replies_tx));
        let (cols, rows, pw, ph) = match *self.windows.borrow() {
            Some(size) => size,
            None => (pty.cols, pty.rows, pty.pix_width, pty.pix_height),
        };
        let asked = async {
            up_write
                .request_pty(true, &pty.term, cols, rows, pw, ph, &pty.modes)
                .await?;
            let pty_ok = matches!(replies.recv().await, Some(true));
            up_write.request_shell(true).await?;
            let shell_ok = matches!(replies.recv().await, Some(true));
            Ok::<bool, russh::Error>(pty_ok && shell_ok)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, asked).await {
            Ok(Ok(true)) => {}
            _ => return Err((self, format!("{} refused a shell", sandbox.id))),
        }
        if !ahead.is_empty() {
            let _ = up_write.data_bytes(ahead).await;
        }
        let audit = ctx
            .lifecycle
            .store
            .open_ssh_session(&NewSshSession {
                user_id: Some(ctx.user.id.clone()),
                sandbox_id: sandbox.id.clone(),
                source_addr: ctx.peer,
            })
            .await
            .map_err(|e| tracing::warn!(error = %e, "cannot record the session for audit"))
            .ok();
        let channel_audit = Arc::new(ChannelAudit::default());
        let terminal = Terminal {
            term: pty.term.clone(),
            cols,
            rows,
        };
        let program = Program {
            kind: ChannelKind::Shell,
            command: None,
        };
        let title = format!("{} on {}", ctx.user.name, sandbox.id);
        let session_id = audit.as_ref().map(|row| &row.id);
        if let Err(reason) = channel_audit
            .start(
                &ctx.door,
                session_id,
                sandbox.owner_id.as_str(),
                1,
                program,
                Some(&terminal),
                title,
            )
            .await
        {
            return Err((self, reason));
        }
        let up_write = Arc::new(up_write);
        let ConsoleChannel {
            id,
            input,
            output,
            mut windows,
            ..
        } = self;
        let resize_to = up_write.clone();
        let resize_audit = channel_audit.clone();
        let resizer = tokio::spawn(async move {
            while windows.changed().await.is_ok() {
                let size = *windows.borrow();
                if let Some((c, r, pw, ph)) = size {
                    let _ = resize_to.window_change(c, r, pw, ph).await;
                    resize_audit.resize(c, r).await;
                }
            }
        });
        let to_agent = up_write.clone();
        let grant = ctx.grant.clone();
        let input_tap = channel_audit.input_tap();
        let inbound = tokio::spawn(async move {
            pipe::channel_to_channel(input, id, grant, &to_agent, |_| None, Some(&input_tap))
                .await
                .0
        });
        let output_tap = channel_audit.output_tap();
        let (bytes_out, exit) = pipe::channel_to_channel(
            from_agent,
            up_id,
            up.grant(),
            &output,
            |_| None,
            Some(&output_tap),
        )
        .await;
        resizer.abort();
        // The client closes its side once ours is closed; don't wait on one that won't.
        let abort = inbound.abort_handle();
        let bytes_in = match tokio::time::timeout(Duration::from_secs(2), inbound).await {
            Ok(Ok(n)) => n,
            _ => {
                abort.abort();
                0
            }
        };
        channel_audit.add_bytes_in(bytes_in);
        channel_audit
            .finish(&ctx.lifecycle.store, bytes_out, exit)
            .await;
        drop(output_tap);
        drop(channel_audit);
        if let Some(row) = audit {
            let end = SessionEnd {
                bytes_in,
                bytes_out,
                exit: exit.as_session_exit(),
            };
            if let Err(e) = ctx.lifecycle.store.close_ssh_session(&row.id, &end).await {
                tracing::warn!(error = %e, "cannot close the session's audit record");
            }
        }
        drop(up);
        Ok(())
    }
}
