//! Answers one request: the filesystem side of each SFTP v3 operation.
//!
//! Everything here is synchronous: the session runs it on a blocking thread, one request
//! at a time and in arrival order, as OpenSSH's server does, so no operation can overtake
//! another on the same file.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{
    Attrs, Close, FSetStat, File, FileAttributes, Fstat, Handle as HandleReply, Init, Lstat, MkDir,
    Name, Open, OpenDir as OpenDirRequest, OpenFlags, Packet, Read, ReadDir, ReadLink, RealPath,
    Remove, Rename, RmDir, SetStat, Stat, Status, StatusCode, Symlink, Version, Write,
};
use tracing::debug;

use super::accounts::Accounts;
use super::attrs::{self, Target};
use super::error::{Result, SftpError};
use super::handles::{Handle, HandleTable, OpenDir, OpenFile};
use super::paths::{self, Roots};
use super::{MAX_DATA_LEN, MAX_HANDLES, extensions, sys};

/// SFTP protocol version 3, the one OpenSSH speaks.
const VERSION: u32 = 3;
/// Directory entries per READDIR reply (OpenSSH sends up to 100).
const READDIR_BATCH: usize = 100;
/// SSH_FXP_DATA's type byte, and the bytes before its data: length, type, id, data length.
const SSH_FXP_DATA: u8 = 103;
const DATA_HEADER_LEN: usize = 4 + 1 + 4 + 4;

/// A reply for the session to send.
pub(super) enum Reply {
    Packet(Packet),
    /// Already encoded, length field included (DATA replies, see [`Handler::read`]).
    Encoded(Bytes),
}

/// One session's state: where paths start, its open handles, and account names.
/// Dropping it closes every handle the client left open.
pub(super) struct Handler {
    pub(super) roots: Roots,
    pub(super) handles: HandleTable,
    pub(super) accounts: Accounts,
}

impl Handler {
    pub(super) fn new(roots: Roots) -> Self {
        Self {
            roots,
            handles: HandleTable::new(MAX_HANDLES),
            accounts: Accounts::default(),
        }
    }

    /// Decodes and answers one packet (its bytes after the length field).
    pub(super) fn handle_packet(&mut self, frame: Bytes) -> Reply {
        let packet_type = frame.first().copied().unwrap_or(0);
        // Every request but INIT carries its id right after the type byte; answer a
        // packet we cannot decode with that id so the client can match the failure.
        let id = match frame.get(1..5) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => 0,
        };
        let mut body = frame;
        let error = match Packet::try_from(&mut body) {
            Ok(packet) => return self.handle(packet),
            Err(err) if is_request_type(packet_type) => {
                SftpError::BadMessage(format!("malformed request: {err}"))
            }
            Err(_) => SftpError::Unsupported(format!("unknown request type {packet_type}")),
        };
        debug!(id, packet_type, %error, "undecodable SFTP packet");
        Reply::Packet(error.into_status(id).into())
    }

    pub(super) fn handle(&mut self, packet: Packet) -> Reply {
        let id = packet.get_request_id();
        self.dispatch(packet).unwrap_or_else(|err| {
            // EOF ends every download and listing; it is not worth a log line.
            if !matches!(err, SftpError::Eof) {
                debug!(id, code = ?err.code(), %err, "SFTP request failed");
            }
            Reply::Packet(err.into_status(id).into())
        })
    }

    fn dispatch(&mut self, packet: Packet) -> Result<Reply> {
        let reply = match packet {
            Packet::Init(init) => self.init(&init),
            Packet::Open(req) => self.open(req)?,
            Packet::Close(req) => self.close(req)?,
            Packet::Read(req) => return self.read(req),
            Packet::Write(req) => self.write(req)?,
            Packet::Lstat(req) => self.lstat(req)?,
            Packet::Fstat(req) => self.fstat(req)?,
            Packet::Stat(req) => self.stat(req)?,
            Packet::SetStat(req) => self.setstat(req)?,
            Packet::FSetStat(req) => self.fsetstat(req)?,
            Packet::OpenDir(req) => self.opendir(req)?,
            Packet::ReadDir(req) => self.readdir(req)?,
            Packet::Remove(req) => self.remove(req)?,
            Packet::MkDir(req) => self.mkdir(req)?,
            Packet::RmDir(req) => self.rmdir(req)?,
            Packet::RealPath(req) => self.realpath(req)?,
            Packet::Rename(req) => self.rename(req)?,
            Packet::ReadLink(req) => self.readlink(req)?,
            Packet::Symlink(req) => self.symlink(req)?,
            Packet::Extended(req) => extensions::handle(self, req.id, &req.request, req.data)?,
            // Server-to-client packets: a client sending one is confused, not malicious.
            Packet::Version(_)
            | Packet::Status(_)
            | Packet::Handle(_)
            | Packet::Data(_)
            | Packet::Name(_)
            | Packet::Attrs(_)
            | Packet::ExtendedReply(_) => {
                return Err(SftpError::BadMessage("not a request".into()));
            }
        };
        Ok(Reply::Packet(reply))
    }

    /// A client path as a filesystem path (see [`paths::resolve`]).
    pub(super) fn path(&self, path: &str) -> Result<PathBuf> {
        paths::resolve(&self.roots.cwd, path.as_bytes())
    }

    fn init(&mut self, init: &Init) -> Packet {
        debug!(client_version = init.version, "sftp session started");
        Version {
            version: VERSION,
            extensions: extensions::advertised(),
        }
        .into()
    }

    fn open(&mut self, req: Open) -> Result<Packet> {
        let path = self.path(&req.filename)?;
        let flags = req.pflags;
        let write = flags.contains(OpenFlags::WRITE);
        let append = flags.contains(OpenFlags::APPEND);
        let mut extra = 0;
        for (flag, bit) in [
            (OpenFlags::CREATE, libc::O_CREAT),
            (OpenFlags::TRUNCATE, libc::O_TRUNC),
            (OpenFlags::EXCLUDE, libc::O_EXCL),
        ] {
            if flags.contains(flag) {
                extra |= bit;
            }
        }
        // Creation flags go in as raw bits: std refuses O_CREAT without write access,
        // which open(2) (and OpenSSH) allow. Neither READ nor WRITE means read-only.
        let file = OpenOptions::new()
            .read(flags.contains(OpenFlags::READ) || !(write || append))
            .write(write)
            .append(append)
            .custom_flags(extra)
            .mode(req.attrs.permissions.map_or(0o666, |mode| mode & 0o7777))
            .open(&path)?;
        let handle = self
            .handles
            .insert(Handle::File(OpenFile { file, append }))?;
        Ok(HandleReply { id: req.id, handle }.into())
    }

    fn close(&mut self, req: Close) -> Result<Packet> {
        match self.handles.remove(&req.handle)? {
            Handle::File(open) => sys::close(open.file)?,
            Handle::Dir(_) => {}
        }
        Ok(ok(req.id))
    }

    /// Reads straight into the encoded DATA reply: this is the hot path of every
    /// download, and going through `Packet::Data` would allocate and copy it twice more.
    fn read(&mut self, req: Read) -> Result<Reply> {
        let open = self.handles.file(&req.handle)?;
        // Whatever the client asks, one reply stays within the advertised limit; a short
        // read is normal SFTP and clients ask again for the rest.
        let len = req.len.min(MAX_DATA_LEN) as usize;
        let mut reply = BytesMut::with_capacity(DATA_HEADER_LEN + len);
        reply.resize(DATA_HEADER_LEN + len, 0);
        let n = retry(|| open.file.read_at(&mut reply[DATA_HEADER_LEN..], req.offset))?;
        if n == 0 {
            return Err(SftpError::Eof);
        }
        reply.truncate(DATA_HEADER_LEN + n);
        // uint32 length, byte type, uint32 id, string data (uint32 length + bytes).
        let n = n as u32; // at most MAX_DATA_LEN
        let mut header = &mut reply[..DATA_HEADER_LEN];
        header.put_u32(9 + n);
        header.put_u8(SSH_FXP_DATA);
        header.put_u32(req.id);
        header.put_u32(n);
        Ok(Reply::Encoded(reply.freeze()))
    }

    fn write(&mut self, req: Write) -> Result<Packet> {
        let open = self.handles.file(&req.handle)?;
        if open.append {
            (&open.file).write_all(&req.data)?;
        } else {
            open.file.write_all_at(&req.data, req.offset)?;
        }
        Ok(ok(req.id))
    }

    fn stat(&mut self, req: Stat) -> Result<Packet> {
        let md = std::fs::metadata(self.path(&req.path)?)?;
        Ok(attrs_reply(req.id, attrs::from_metadata(&md)))
    }

    fn lstat(&mut self, req: Lstat) -> Result<Packet> {
        let md = std::fs::symlink_metadata(self.path(&req.path)?)?;
        Ok(attrs_reply(req.id, attrs::from_metadata(&md)))
    }

    fn fstat(&mut self, req: Fstat) -> Result<Packet> {
        let md = self.handles.file(&req.handle)?.file.metadata()?;
        Ok(attrs_reply(req.id, attrs::from_metadata(&md)))
    }

    fn setstat(&mut self, req: SetStat) -> Result<Packet> {
        let path = self.path(&req.path)?;
        attrs::apply(
            Target::Path {
                path: &path,
                follow: true,
            },
            &req.attrs,
        )?;
        Ok(ok(req.id))
    }

    fn fsetstat(&mut self, req: FSetStat) -> Result<Packet> {
        let open = self.handles.file(&req.handle)?;
        attrs::apply(Target::File(&open.file), &req.attrs)?;
        Ok(ok(req.id))
    }

    fn opendir(&mut self, req: OpenDirRequest) -> Result<Packet> {
        let path = self.path(&req.path)?;
        let entries = std::fs::read_dir(&path)?;
        let handle = self.handles.insert(Handle::Dir(OpenDir {
            path,
            entries,
            dots_sent: false,
        }))?;
        Ok(HandleReply { id: req.id, handle }.into())
    }

    fn readdir(&mut self, req: ReadDir) -> Result<Packet> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let dir = self.handles.dir_mut(&req.handle)?;
        let accounts = &mut self.accounts;
        let mut files = Vec::new();
        let mut push = |name: &str, md: &std::fs::Metadata| {
            files.push(File {
                filename: name.to_owned(),
                longname: attrs::longname(name, md, accounts, now),
                attrs: attrs::from_metadata(md),
            });
        };
        if !dir.dots_sent {
            dir.dots_sent = true;
            for (name, path) in [(".", dir.path.clone()), ("..", dir.path.join(".."))] {
                if let Ok(md) = std::fs::symlink_metadata(&path) {
                    push(name, &md);
                }
            }
        }
        let mut sent = 0;
        while sent < READDIR_BATCH {
            let entry = match dir.entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                // Report the error unless we have entries to send first.
                Some(Err(err)) if sent == 0 => return Err(err.into()),
                Some(Err(_)) => break,
            };
            // Not following symlinks, like ls -l. An entry deleted since the listing
            // started is simply skipped.
            let Ok(md) = entry.metadata() else { continue };
            // Non-UTF-8 names cannot travel through russh-sftp's String fields intact.
            push(&entry.file_name().to_string_lossy(), &md);
            sent += 1;
        }
        if files.is_empty() {
            return Err(SftpError::Eof);
        }
        Ok(Name { id: req.id, files }.into())
    }

    fn remove(&mut self, req: Remove) -> Result<Packet> {
        std::fs::remove_file(self.path(&req.filename)?)?;
        Ok(ok(req.id))
    }

    fn mkdir(&mut self, req: MkDir) -> Result<Packet> {
        let path = self.path(&req.path)?;
        DirBuilder::new()
            .mode(req.attrs.permissions.map_or(0o777, |mode| mode & 0o7777))
            .create(path)?;
        Ok(ok(req.id))
    }

    fn rmdir(&mut self, req: RmDir) -> Result<Packet> {
        std::fs::remove_dir(self.path(&req.path)?)?;
        Ok(ok(req.id))
    }

    fn realpath(&mut self, req: RealPath) -> Result<Packet> {
        let real = paths::realpath(&self.roots.cwd, req.path.as_bytes())?;
        Ok(name_reply(req.id, &real))
    }

    /// Plain RENAME never replaces an existing target (SFTP v3; OpenSSH's `rename`
    /// uses posix-rename@openssh.com when it wants POSIX semantics).
    fn rename(&mut self, req: Rename) -> Result<Packet> {
        let from = self.path(&req.oldpath)?;
        let to = self.path(&req.newpath)?;
        if !sys::rename_noreplace(&from, &to)? {
            // This filesystem cannot refuse atomically: check, then rename.
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST).into());
            }
            std::fs::rename(&from, &to)?;
        }
        Ok(ok(req.id))
    }

    fn readlink(&mut self, req: ReadLink) -> Result<Packet> {
        let target = std::fs::read_link(self.path(&req.path)?)?;
        Ok(name_reply(req.id, &target))
    }

    /// OpenSSH sends SYMLINK's two paths in the reverse of the draft's order: first the
    /// link's contents, then where to create it. russh-sftp names the fields by the
    /// draft, so `linkpath` holds the contents here. The contents are stored verbatim
    /// (a relative target stays relative); only the new link's path is resolved.
    fn symlink(&mut self, req: Symlink) -> Result<Packet> {
        let link = self.path(&req.targetpath)?;
        std::os::unix::fs::symlink(&req.linkpath, link)?;
        Ok(ok(req.id))
    }
}

fn is_request_type(packet_type: u8) -> bool {
    matches!(packet_type, 1 | 3..=20 | 200)
}

/// Retries a system call interrupted by a signal.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

pub(super) fn ok(id: u32) -> Packet {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Success".to_owned(),
        language_tag: "en".to_owned(),
    }
    .into()
}

fn attrs_reply(id: u32, attrs: FileAttributes) -> Packet {
    Attrs { id, attrs }.into()
}

/// A NAME reply with one path, as REALPATH, READLINK and expand-path send (OpenSSH puts
/// the path in both name fields and no attributes).
pub(super) fn name_reply(id: u32, path: &Path) -> Packet {
    let name = path.to_string_lossy().into_owned();
    Name {
        id,
        files: vec![File {
            filename: name.clone(),
            longname: name,
            attrs: FileAttributes::empty(),
        }],
    }
    .into()
}
