//! Pseudo-terminals for interactive sessions: opened with portable-pty, set up with
//! the client's terminal modes, and read and written asynchronously.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use portable_pty::{MasterPty, PtySize, native_pty_system};
use russh::Pty;
use tokio::io::unix::AsyncFd;

/// What the client asked for in its `pty-req`.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub size: PtySize,
    pub modes: Vec<(Pty, u32)>,
}

pub fn size(cols: u32, rows: u32, pix_width: u32, pix_height: u32) -> PtySize {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    PtySize {
        rows: clamp(rows),
        cols: clamp(cols),
        pixel_width: clamp(pix_width),
        pixel_height: clamp(pix_height),
    }
}

/// An open terminal: the master kept by the agent, the slave handed to the child.
pub struct Terminal {
    pub master: Box<dyn MasterPty + Send>,
    pub io: PtyIo,
    pub slave: OwnedFd,
}

/// Opens a terminal, applies the requested modes and gives the slave to `owner`.
pub fn open(request: &PtyRequest, owner: Option<(u32, u32)>) -> io::Result<Terminal> {
    let pair = native_pty_system()
        .openpty(request.size)
        .map_err(|e| io::Error::other(format!("openpty: {e}")))?;
    let master = pair.master;
    let path = master
        .tty_name()
        .ok_or_else(|| io::Error::other("pty has no name"))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)?;
    drop(pair.slave);
    let slave = OwnedFd::from(slave);
    apply_modes(slave.as_raw_fd(), &request.modes)?;
    if let Some((uid, gid)) = owner {
        give_terminal(&slave, uid, gid)?;
    }
    let raw = master
        .as_raw_fd()
        .ok_or_else(|| io::Error::other("pty master has no fd"))?;
    let io = PtyIo::new(raw)?;
    Ok(Terminal { master, io, slave })
}

use std::os::unix::fs::OpenOptionsExt;

/// As sshd does: the terminal belongs to its user, writable by the tty group only.
/// Through the descriptor, not the path, and the mode first: a Docker sandbox's
/// agent has CAP_CHOWN but not CAP_FOWNER, so once the terminal is the user's the
/// agent may no longer change its mode.
fn give_terminal(slave: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::from(slave.try_clone()?);
    file.set_permissions(std::fs::Permissions::from_mode(0o620))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
}

/// Applies RFC 4254 terminal modes to a terminal's termios.
fn apply_modes(fd: RawFd, modes: &[(Pty, u32)]) -> io::Result<()> {
    if modes.is_empty() {
        return Ok(());
    }
    // SAFETY: termios is plain old data; tcgetattr fills it before we read it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal owned by the caller.
    if unsafe { libc::tcgetattr(fd, &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    for &(mode, value) in modes {
        apply_mode(&mut t, mode, value);
    }
    // SAFETY: as above; t is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn apply_mode(t: &mut libc::termios, mode: Pty, value: u32) {
    let on = value != 0;
    let set = |flags: &mut libc::tcflag_t, bit: libc::tcflag_t| {
        if on { *flags |= bit } else { *flags &= !bit }
    };
    // Special characters take the byte value. OpenSSH sends 255 for "disabled",
    // which Linux spells 0 (_POSIX_VDISABLE), as sshd translates it.
    let cc = |t: &mut libc::termios, index: usize| {
        if let Some(slot) = t.c_cc.get_mut(index) {
            *slot = match u8::try_from(value) {
                Ok(0xff) | Err(_) => 0,
                Ok(byte) => byte,
            };
        }
    };
    match mode {
        Pty::VINTR => cc(t, libc::VINTR),
        Pty::VQUIT => cc(t, libc::VQUIT),
        Pty::VERASE => cc(t, libc::VERASE),
        Pty::VKILL => cc(t, libc::VKILL),
        Pty::VEOF => cc(t, libc::VEOF),
        Pty::VEOL => cc(t, libc::VEOL),
        Pty::VEOL2 => cc(t, libc::VEOL2),
        Pty::VSTART => cc(t, libc::VSTART),
        Pty::VSTOP => cc(t, libc::VSTOP),
        Pty::VSUSP => cc(t, libc::VSUSP),
        Pty::VREPRINT => cc(t, libc::VREPRINT),
        Pty::VWERASE => cc(t, libc::VWERASE),
        Pty::VLNEXT => cc(t, libc::VLNEXT),
        Pty::VDISCARD => cc(t, libc::VDISCARD),
        Pty::IGNPAR => set(&mut t.c_iflag, libc::IGNPAR),
        Pty::PARMRK => set(&mut t.c_iflag, libc::PARMRK),
        Pty::INPCK => set(&mut t.c_iflag, libc::INPCK),
        Pty::ISTRIP => set(&mut t.c_iflag, libc::ISTRIP),
        Pty::INLCR => set(&mut t.c_iflag, libc::INLCR),
        Pty::IGNCR => set(&mut t.c_iflag, libc::IGNCR),
        Pty::ICRNL => set(&mut t.c_iflag, libc::ICRNL),
        Pty::IUCLC => set(&mut t.c_iflag, libc::IUCLC),
        Pty::IXON => set(&mut t.c_iflag, libc::IXON),
        Pty::IXANY => set(&mut t.c_iflag, libc::IXANY),
        Pty::IXOFF => set(&mut t.c_iflag, libc::IXOFF),
        Pty::IMAXBEL => set(&mut t.c_iflag, libc::IMAXBEL),
        Pty::IUTF8 => set(&mut t.c_iflag, libc::IUTF8),
        Pty::ISIG => set(&mut t.c_lflag, libc::ISIG),
        Pty::ICANON => set(&mut t.c_lflag, libc::ICANON),
        Pty::XCASE => set(&mut t.c_lflag, libc::XCASE),
        Pty::ECHO => set(&mut t.c_lflag, libc::ECHO),
        Pty::ECHOE => set(&mut t.c_lflag, libc::ECHOE),
        Pty::ECHOK => set(&mut t.c_lflag, libc::ECHOK),
        Pty::ECHONL => set(&mut t.c_lflag, libc::ECHONL),
        Pty::NOFLSH => set(&mut t.c_lflag, libc::NOFLSH),
        Pty::TOSTOP => set(&mut t.c_lflag, libc::TOSTOP),
        Pty::IEXTEN => set(&mut t.c_lflag, libc::IEXTEN),
        Pty::ECHOCTL => set(&mut t.c_lflag, libc::ECHOCTL),
        Pty::ECHOKE => set(&mut t.c_lflag, libc::ECHOKE),
        Pty::PENDIN => set(&mut t.c_lflag, libc::PENDIN),
        Pty::OPOST => set(&mut t.c_oflag, libc::OPOST),
        Pty::OLCUC => set(&mut t.c_oflag, libc::OLCUC),
        Pty::ONLCR => set(&mut t.c_oflag, libc::ONLCR),
        Pty::OCRNL => set(&mut t.c_oflag, libc::OCRNL),
        Pty::ONOCR => set(&mut t.c_oflag, libc::ONOCR),
        Pty::ONLRET => set(&mut t.c_oflag, libc::ONLRET),
        Pty::CS7 => {
            t.c_cflag &= !libc::CSIZE;
            t.c_cflag |= if on { libc::CS7 } else { libc::CS8 };
        }
        Pty::CS8 => {
            t.c_cflag &= !libc::CSIZE;
            t.c_cflag |= if on { libc::CS8 } else { libc::CS7 };
        }
        Pty::PARENB => set(&mut t.c_cflag, libc::PARENB),
        Pty::PARODD => set(&mut t.c_cflag, libc::PARODD),
        // Speeds mean nothing on a pseudo-terminal; the rest has no Linux equivalent.
        Pty::TTY_OP_ISPEED
        | Pty::TTY_OP_OSPEED
        | Pty::TTY_OP_END
        | Pty::VDSUSP
        | Pty::VFLUSH
        | Pty::VSWTCH
        | Pty::VSTATUS => {}
    }
}

/// Non-blocking reads and writes on the master side of a terminal.
#[derive(Clone)]
pub struct PtyIo {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl PtyIo {
    fn new(master: RawFd) -> io::Result<PtyIo> {
        // Our own descriptor, so the master's lifetime in portable-pty doesn't bind us.
        // SAFETY: dup of a valid fd; the result is owned by the OwnedFd below.
        let fd = unsafe { libc::fcntl(master, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by fcntl and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: we own fd (a private dup) and it stays open as long as the AsyncFd.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PtyIo { fd: Arc::new(fd) })
    }

    /// Reads some output; `Ok(0)` once every slave descriptor is closed.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: buf is valid for writes of buf.len() bytes.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    // EIO: the last slave descriptor closed; that is the end of output.
                    if err.raw_os_error() == Some(libc::EIO) {
                        return Ok(0);
                    }
                    return Err(err);
                }
                Ok(n.unsigned_abs())
            });
            match result {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads output that is already there, without waiting for more.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: as in read.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EIO) | Some(libc::EAGAIN) => Ok(0),
                _ => Err(err),
            };
        }
        Ok(n.unsigned_abs())
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: buf is valid for reads of buf.len() bytes.
                let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(n.unsigned_abs())
            });
            if let Ok(written) = result {
                buf = buf.get(written?..).unwrap_or_default();
            }
        }
        Ok(())
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
