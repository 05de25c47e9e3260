//! The OpenSSH extensions (`PROTOCOL` in OpenSSH's source) that its `sftp` and `scp`
//! use, plus `copy-data` for `sftp cp`. Any other extension is "operation unsupported".

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use bytes::{BufMut, BytesMut};
use russh_sftp::protocol::{ExtendedReply, FileAttributes, Packet};

use super::attrs::{self, Target};
use super::error::{Result, SftpError};
use super::handler::{Handler, name_reply, ok};
use super::{MAX_DATA_LEN, MAX_HANDLES, MAX_PACKET_LEN, paths, sys};

/// Extension names and versions sent in the VERSION reply.
const ADVERTISED: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("lsetstat@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
    ("copy-data", "1"),
    ("home-directory", "1"),
    ("users-groups-by-id@openssh.com", "1"),
];

pub(super) fn advertised() -> HashMap<String, String> {
    ADVERTISED
        .iter()
        .map(|&(name, version)| (name.to_owned(), version.to_owned()))
        .collect()
}

/// Answers one SSH_FXP_EXTENDED request. Paths in extension payloads are read as raw
/// bytes, so unlike the core requests they survive non-UTF-8 names.
pub(super) fn handle(
    handler: &mut Handler,
    id: u32,
    request: &str,
    data: Vec<u8>,
) -> Result<Packet> {
    let mut args = Args(&data);
    let roots = handler.roots.clone();
    let path = |bytes: &[u8]| paths::resolve(&roots.cwd, bytes);
    let reply = match request {
        "posix-rename@openssh.com" => {
            let (from, to) = (path(args.string()?)?, path(args.string()?)?);
            std::fs::rename(from, to)?;
            ok(id)
        }
        "hardlink@openssh.com" => {
            let (from, to) = (path(args.string()?)?, path(args.string()?)?);
            std::fs::hard_link(from, to)?;
            ok(id)
        }
        "statvfs@openssh.com" => statvfs_reply(id, &sys::statvfs(&path(args.string()?)?)?),
        "fstatvfs@openssh.com" => {
            let handle = args.utf8()?;
            statvfs_reply(id, &sys::fstatvfs(&handler.handles.file(&handle)?.file)?)
        }
        "fsync@openssh.com" => {
            handler.handles.file(&args.utf8()?)?.file.sync_all()?;
            ok(id)
        }
        "lsetstat@openssh.com" => {
            let target = path(args.string()?)?;
            let mut rest = bytes::Bytes::copy_from_slice(args.0);
            let attrs: FileAttributes = russh_sftp::de::from_bytes(&mut rest)
                .map_err(|err| SftpError::BadMessage(format!("bad attributes: {err}")))?;
            attrs::apply(
                Target::Path {
                    path: &target,
                    follow: false,
                },
                &attrs,
            )?;
            ok(id)
        }
        "limits@openssh.com" => {
            let limits = [MAX_PACKET_LEN, MAX_DATA_LEN, MAX_DATA_LEN].map(u64::from);
            extended_reply(id, |out| {
                for value in limits.into_iter().chain([MAX_HANDLES as u64]) {
                    out.put_u64(value);
                }
            })
        }
        "expand-path@openssh.com" => name_reply(
            id,
            &paths::expand(&roots, &mut handler.accounts, args.string()?)?,
        ),
        "home-directory" => {
            let mut tilde = b"~".to_vec();
            tilde.extend_from_slice(args.string()?);
            name_reply(id, &paths::expand(&roots, &mut handler.accounts, &tilde)?)
        }
        "users-groups-by-id@openssh.com" => users_groups_by_id(handler, id, &mut args)?,
        "copy-data" => copy_data(handler, id, &mut args)?,
        _ => {
            return Err(SftpError::Unsupported(format!(
                "unsupported extension {request:?}"
            )));
        }
    };
    Ok(reply)
}

fn extended_reply(id: u32, fill: impl FnOnce(&mut BytesMut)) -> Packet {
    let mut data = BytesMut::new();
    fill(&mut data);
    ExtendedReply {
        id,
        data: data.to_vec(),
    }
    .into()
}

fn statvfs_reply(id: u32, stats: &sys::FsStats) -> Packet {
    extended_reply(id, |out| stats.0.iter().for_each(|&v| out.put_u64(v)))
}

/// Names for uids and gids, so `ls -l` can show owners of globbed files; an unknown id
/// gets an empty name, which the client shows as the number.
fn users_groups_by_id(handler: &mut Handler, id: u32, args: &mut Args<'_>) -> Result<Packet> {
    let (uids, gids) = (Args(args.string()?), Args(args.string()?));
    let mut lists = [BytesMut::new(), BytesMut::new()];
    for (list, (mut ids, is_user)) in lists.iter_mut().zip([(uids, true), (gids, false)]) {
        while !ids.0.is_empty() {
            let id = ids.u32()?;
            let name = if is_user {
                handler.accounts.user(id)
            } else {
                handler.accounts.group(id)
            };
            put_string(list, name.unwrap_or("").as_bytes());
        }
    }
    let [users, groups] = lists;
    Ok(extended_reply(id, |out| {
        put_string(out, &users);
        put_string(out, &groups);
    }))
}

/// Server-side copy between two open handles (`sftp cp`): read handle and range (length
/// 0 = to end of file), write handle and offset.
fn copy_data(handler: &mut Handler, id: u32, args: &mut Args<'_>) -> Result<Packet> {
    let (src, offset, len) = (args.utf8()?, args.u64()?, args.u64()?);
    let (dst, dst_offset) = (args.utf8()?, args.u64()?);
    if src == dst && (len == 0 || ranges_overlap(offset, len, dst_offset)) {
        return Err(SftpError::Failure(
            "copy-data: source and destination overlap".into(),
        ));
    }
    let from = &handler.handles.file(&src)?.file;
    let to = handler.handles.file(&dst)?;
    let mut buf = vec![0; MAX_DATA_LEN as usize];
    let (mut done, end) = (0u64, if len == 0 { u64::MAX } else { len });
    while done < end {
        let want = usize::try_from(end - done).map_or(buf.len(), |left| left.min(buf.len()));
        let n = from.read_at(&mut buf[..want], offset.saturating_add(done))?;
        if n == 0 {
            break;
        }
        to.file
            .write_all_at(&buf[..n], dst_offset.saturating_add(done))?;
        done += n as u64;
    }
    Ok(ok(id))
}

fn ranges_overlap(a: u64, len: u64, b: u64) -> bool {
    let a_end = a.saturating_add(len);
    let b_end = b.saturating_add(len);
    a < b_end && b < a_end
}

fn put_string(out: &mut BytesMut, bytes: &[u8]) {
    // Strings here are names and id lists, far below 4 GiB.
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

/// Reads an extension's arguments: SSH wire `uint32`, `uint64` and `string`.
struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(SftpError::BadMessage(
                "extension arguments too short".into(),
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let mut word = [0; 4];
        word.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(word))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut word = [0; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(word))
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A handle: our handles are ASCII, so anything else simply will not match one.
    fn utf8(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(self.string()?).into_owned())
    }
}
