//! One session channel: its pty and environment requests, the program it runs, and
//! the bytes between that program and the client.
//!
//! Requests are answered by the connection handler as they arrive; this module starts
//! the program and moves data. Output is sent only as the client's window allows, and
//! input is held (not dropped) until a program exists to read it.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use portable_pty::MasterPty;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelWriteHalf, Sig};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

use crate::persistent::{self, AttachError, Persistent};
use crate::process::{Launch, Program};
use crate::pty::{self, PtyIo, PtyRequest};
use crate::pump::{Backlog, Closed, Input, READ_CHUNK, drain_input, send_output};

/// Where a session's input goes once its program runs.
enum Stdin {
    Pipe(ChildStdin),
    Pty(PtyIo),
}

impl Stdin {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stdin::Pipe(pipe) => pipe.write_all(data).await,
            Stdin::Pty(pty) => pty.write_all(data).await,
        }
    }
}

/// A running program.
struct Running {
    pid: Option<u32>,
    /// Kept for window-change requests.
    master: Option<Box<dyn MasterPty + Send>>,
}

pub struct SessionChannel {
    id: ChannelId,
    write: Option<ChannelWriteHalf<Msg>>,
    stdin: Option<oneshot::Sender<Stdin>>,
    env: Vec<(String, String)>,
    pty: Option<PtyRequest>,
    running: Option<Running>,
    /// The persistent session this channel is attached to, instead of a program.
    attached: Option<Attached>,
    closed: Closed,
}

struct Attached {
    session: Arc<Persistent>,
    read_only: bool,
}

/// Variables one session may set; sshd has no such limit, but it has no reason to
/// let a client grow its memory one `env` request at a time either.
const MAX_ENV_VARS: usize = 256;

impl SessionChannel {
    /// Takes over a freshly opened session channel.
    pub fn open(channel: Channel<Msg>, handle: Handle) -> SessionChannel {
        let id = channel.id();
        let (read, write) = channel.split();
        let (stdin_tx, stdin_rx) = oneshot::channel();
        let (input, closed) = drain_input(read, id, handle);
        tokio::spawn(forward_input(input, stdin_rx));
        SessionChannel {
            id,
            write: Some(write),
            stdin: Some(stdin_tx),
            env: Vec::new(),
            pty: None,
            running: None,
            attached: None,
            closed,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn set_pty(&mut self, request: PtyRequest) -> bool {
        if self.running.is_some() || self.pty.is_some() {
            return false;
        }
        self.set_env("TERM", &request.term);
        self.pty = Some(request);
        true
    }

    /// Records a variable for the program; false when the session has too many.
    pub fn set_env(&mut self, name: &str, value: &str) -> bool {
        self.env.retain(|(n, _)| n != name);
        if self.env.len() >= MAX_ENV_VARS {
            return false;
        }
        self.env.push((name.to_owned(), value.to_owned()));
        true
    }

    /// What the client asked for in its `pty-req`, if it did.
    pub fn pty(&self) -> Option<&PtyRequest> {
        self.pty.as_ref()
    }

    /// The variables a program started for this channel gets: `extra_env`
    /// (connection-wide), then what the client set.
    pub fn program_env(&self, extra_env: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = extra_env.to_vec();
        env.extend(self.env.iter().cloned());
        env
    }

    /// Attaches this channel to a persistent session: the session's screen and output
    /// go to the client, and a writer's input and window size to the session (a
    /// read-only client's input is read and dropped).
    pub fn attach(
        &mut self,
        session: &Arc<Persistent>,
        read_only: bool,
        handle: Handle,
    ) -> Result<(), AttachError> {
        let size = self.pty.as_ref().ok_or(AttachError::NoTerminal)?.size;
        if self.write.is_none() || self.stdin.is_none() {
            return Err(AttachError::Ended(session.name().clone()));
        }
        let slot = session.attach((!read_only).then_some(size))?;
        let (Some(write), Some(stdin_tx)) = (self.write.take(), self.stdin.take()) else {
            return Err(AttachError::Ended(session.name().clone()));
        };
        if !read_only {
            let _ = stdin_tx.send(Stdin::Pty(session.input()));
        }
        persistent::attach_channel(
            session.clone(),
            slot,
            write,
            self.id,
            handle,
            self.closed.clone(),
        );
        self.running = Some(Running {
            pid: None,
            master: None,
        });
        self.attached = Some(Attached {
            session: session.clone(),
            read_only,
        });
        Ok(())
    }

    /// Ends the channel with `message` on stderr and status 1, running nothing.
    pub fn refuse(&mut self, message: String) {
        self.stdin = None;
        if let Some(write) = self.write.take() {
            persistent::refuse(write, message);
        }
        self.running = Some(Running {
            pid: None,
            master: None,
        });
    }

    /// Starts `program`; the session's output and exit status then flow to the client.
    /// `extra_env` holds connection-wide variables (SSH_CONNECTION, SSH_AUTH_SOCK).
    pub fn start(
        &mut self,
        program: Program,
        launch: &Launch<'_>,
        extra_env: &[(String, String)],
        handle: Handle,
    ) -> io::Result<()> {
        let (Some(write), Some(stdin_tx)) = (self.write.take(), self.stdin.take()) else {
            return Err(io::Error::other("the session already runs a program"));
        };
        let env = self.program_env(extra_env);
        let id = self.id;
        match &self.pty {
            Some(request) => {
                let (terminal, child) = spawn_on_terminal(request, &program, launch, env)?;
                let _ = stdin_tx.send(Stdin::Pty(terminal.io.clone()));
                self.running = Some(Running {
                    pid: child.id(),
                    master: Some(terminal.master),
                });
                let closed = self.closed.clone();
                tokio::spawn(relay_terminal(
                    id,
                    write,
                    terminal.io,
                    child,
                    handle,
                    closed,
                ));
            }
            None => {
                let launch = Launch {
                    env: &env,
                    ..launch.clone()
                };
                let mut child = launch.spawn_piped(&program)?;
                if let Some(pipe) = child.stdin.take() {
                    let _ = stdin_tx.send(Stdin::Pipe(pipe));
                }
                self.running = Some(Running {
                    pid: child.id(),
                    master: None,
                });
                tokio::spawn(relay_pipes(id, write, child, handle, self.closed.clone()));
            }
        }
        Ok(())
    }

    pub fn resize(&mut self, size: portable_pty::PtySize) {
        if let Some(attached) = &self.attached {
            // The window follows the latest writer; watchers' sizes are their own.
            if !attached.read_only {
                attached.session.resize(size);
            }
            return;
        }
        if let Some(master) = self.running.as_ref().and_then(|r| r.master.as_ref()) {
            if let Err(e) = master.resize(size) {
                tracing::debug!(error = %e, "window change failed");
            }
        } else if let Some(pty) = &mut self.pty {
            pty.size = size;
        }
    }

    pub fn signal(&self, signal: &Sig) {
        let Some(pid) = self.running.as_ref().and_then(|r| r.pid) else {
            return;
        };
        let Some(signo) = signal_number(signal) else {
            tracing::debug!(?signal, "unknown signal ignored");
            return;
        };
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return;
        };
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(pid, signo) };
    }
}

/// A terminal's agent side, once its program runs.
pub struct OpenTerminal {
    pub master: Box<dyn MasterPty + Send>,
    pub io: PtyIo,
}

/// Opens a terminal as `request` asks and starts `program` on it, with `env` and
/// `SSH_TTY`.
pub fn spawn_on_terminal(
    request: &PtyRequest,
    program: &Program,
    launch: &Launch<'_>,
    mut env: Vec<(String, String)>,
) -> io::Result<(OpenTerminal, Child)> {
    let owner = launch
        .switch_user
        .then_some((launch.user.uid, launch.user.gid));
    let terminal = pty::open(request, owner)?;
    if let Some(name) = terminal.master.tty_name() {
        env.push(("SSH_TTY".into(), name.to_string_lossy().into_owned()));
    }
    let launch = Launch {
        env: &env,
        ..launch.clone()
    };
    let child = launch.spawn_on_tty(program, &terminal.slave)?;
    // The child has its copies; ours would keep the terminal open forever.
    drop(terminal.slave);
    let open = OpenTerminal {
        master: terminal.master,
        io: terminal.io,
    };
    Ok((open, child))
}

/// Feeds the client's input to the program, holding it until the program exists.
async fn forward_input(mut input: Backlog, stdin: oneshot::Receiver<Stdin>) {
    let Ok(mut sink) = stdin.await else {
        return; // no program was started; dropping the queue discards the input
    };
    while let Some(item) = input.recv().await {
        match item {
            Input::Data(data) => {
                crate::activity::touch();
                if sink.write_all(&data).await.is_err() {
                    return; // the program stopped reading; later input is discarded
                }
            }
            // EOF closes a pipe; a terminal has no half-close, as with sshd.
            Input::Eof => {
                if matches!(sink, Stdin::Pipe(_)) {
                    return;
                }
            }
        }
    }
}

async fn relay_pipes(
    id: ChannelId,
    write: ChannelWriteHalf<Msg>,
    mut child: Child,
    handle: Handle,
    mut closed: Closed,
) {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = async {
        if let Some(stdout) = stdout {
            send_output(stdout, &write, None).await;
        }
    };
    let err = async {
        if let Some(stderr) = stderr {
            send_output(stderr, &write, Some(1)).await;
        }
    };
    // Like sshd: the session ends when the program has exited and its output is
    // drained. If the client goes first, the pipes close and the program carries on
    // (it sees EOF and EPIPE, as under sshd); tokio reaps it when it exits.
    tokio::select! {
        ((), (), status) = async { tokio::join!(out, err, child.wait()) } => {
            finish(id, &write, &handle, status).await;
        }
        () = closed.wait() => {}
    }
}

async fn relay_terminal(
    id: ChannelId,
    write: ChannelWriteHalf<Msg>,
    io: PtyIo,
    mut child: Child,
    handle: Handle,
    mut closed: Closed,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let pid = child.id();
    let exited = child.wait();
    tokio::pin!(exited);
    let mut status = None;
    loop {
        tokio::select! {
            read = io.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let chunk = bytes::Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if write.data_bytes(chunk).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            result = &mut exited, if status.is_none() => {
                status = Some(result);
                // Send what the program wrote before it exited, then stop: background
                // processes may hold the terminal open, as they may with sshd.
                while let Ok(n) = io.try_read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = bytes::Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if write.data_bytes(chunk).await.is_err() {
                        break;
                    }
                }
                break;
            }
            () = closed.wait() => {
                // The client is gone: hang up the terminal, as sshd does by closing
                // the master; the shell and its jobs get SIGHUP.
                drop(io);
                hang_up(pid);
                return;
            }
        }
    }
    let status = match status {
        Some(status) => status,
        None => tokio::select! {
            status = exited => status,
            () = closed.wait() => return,
        },
    };
    finish(id, &write, &handle, status).await;
}

/// SIGHUP to a session's process group (its leader's pid, after setsid).
pub fn hang_up(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(-pid, libc::SIGHUP) };
    }
}

/// exit-status (or exit-signal), EOF, CLOSE: the order OpenSSH clients expect.
pub async fn finish(
    id: ChannelId,
    write: &ChannelWriteHalf<Msg>,
    handle: &Handle,
    status: io::Result<std::process::ExitStatus>,
) {
    match status {
        Ok(status) => {
            if let Some(code) = status.code() {
                let _ = write.exit_status(code.unsigned_abs()).await;
            } else if let Some(signo) = status.signal() {
                let _ = handle
                    .exit_signal_request(
                        id,
                        signal_from_number(signo),
                        status.core_dumped(),
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "lost track of a session's program");
            let _ = write.exit_status(255).await;
        }
    }
    let _ = write.eof().await;
    let _ = write.close().await;
}

/// Signal names as RFC 4254 spells them (without "SIG").
const SIGNALS: &[(&str, libc::c_int)] = &[
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("TERM", libc::SIGTERM),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("SYS", libc::SIGSYS),
    ("TRAP", libc::SIGTRAP),
];

fn signal_name(signal: &Sig) -> String {
    match signal {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(name) => name.trim_start_matches("SIG").to_owned(),
    }
}

fn signal_number(signal: &Sig) -> Option<libc::c_int> {
    let name = signal_name(signal);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

fn signal_from_number(signo: libc::c_int) -> Sig {
    match SIGNALS.iter().find(|(_, s)| *s == signo) {
        Some(("ABRT", _)) => Sig::ABRT,
        Some(("ALRM", _)) => Sig::ALRM,
        Some(("FPE", _)) => Sig::FPE,
        Some(("HUP", _)) => Sig::HUP,
        Some(("ILL", _)) => Sig::ILL,
        Some(("INT", _)) => Sig::INT,
        Some(("KILL", _)) => Sig::KILL,
        Some(("PIPE", _)) => Sig::PIPE,
        Some(("QUIT", _)) => Sig::QUIT,
        Some(("SEGV", _)) => Sig::SEGV,
        Some(("TERM", _)) => Sig::TERM,
        Some(("USR1", _)) => Sig::USR1,
        Some((name, _)) => Sig::Custom((*name).to_owned()),
        None => Sig::Custom(format!("SIG{signo}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_by_name_and_number() {
        for (name, signo) in SIGNALS {
            let sig = signal_from_number(*signo);
            assert_eq!(signal_name(&sig), *name);
            assert_eq!(signal_number(&sig), Some(*signo));
        }
        assert_eq!(signal_number(&Sig::Custom("NOPE".into())), None);
    }
}
