"""Files in the sandbox over SFTP, on the sandbox's one SSH connection."""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shlex
import stat as statmod
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Optional, Union

import asyncssh

from ._ssh import SshConnection, ssh_error
from .errors import WarrenError
from .models import FileChange, FileInfo

if TYPE_CHECKING:
    from ._process import AsyncProcess

__all__ = ["AsyncFiles", "FileError", "RemoteFileNotFound", "RemotePermissionError"]


class FileError(WarrenError, OSError):
    """An SFTP operation failed (also an :class:`OSError`)."""


class RemoteFileNotFound(FileError, FileNotFoundError):
    """No such file or directory in the sandbox."""


class RemotePermissionError(FileError, PermissionError):
    """The sandbox user may not do that."""


def _file_error(e: BaseException, path: str) -> BaseException:
    if isinstance(e, asyncssh.SFTPNoSuchFile):
        return RemoteFileNotFound(f"{path}: no such file or directory")
    if isinstance(e, asyncssh.SFTPPermissionDenied):
        return RemotePermissionError(f"{path}: permission denied")
    if isinstance(e, asyncssh.SFTPError):
        return FileError(f"{path}: {e.reason}")
    return ssh_error(e)


@asynccontextmanager
async def _mapped(path: str) -> AsyncIterator[None]:
    try:
        yield
    except (OSError, asyncssh.Error) as e:
        if isinstance(e, FileError):
            raise
        raise _file_error(e, path) from None


def _info(path: str, name: str, attrs: asyncssh.SFTPAttrs) -> FileInfo:
    mode = attrs.permissions or 0
    return FileInfo(
        name=name,
        path=path,
        size=attrs.size or 0,
        mode=statmod.S_IMODE(mode),
        mtime=int(attrs.mtime or 0),
        is_dir=statmod.S_ISDIR(mode),
        is_file=statmod.S_ISREG(mode),
        is_link=statmod.S_ISLNK(mode),
    )


class AsyncFiles:
    """``sb.files``: read, write, list and move files in the sandbox."""

    def __init__(self, connection: Callable[[], Awaitable[SshConnection]]) -> None:
        self._connection = connection

    async def watch(self, path: str) -> "AsyncWatch":
        """Follows changes under the directory ``path`` (the agent's inotify
        watcher, as ``warren mirror`` uses it): ``async for change in watch``;
        ``close()`` stops it."""
        from ._process import spawn

        command = f'exec "${{WARREN_AGENT:-/.warren/bin/warren-agent}}" watch {shlex.quote(path)}'
        return AsyncWatch(await spawn(await self._connection(), command))

    async def read(self, path: str) -> bytes:
        """The whole file."""
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            async with sftp.open(path, "rb") as f:
                data = await f.read()
                return data if isinstance(data, bytes) else data.encode()

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def write(self, path: str, data: Union[bytes, str], *, mode: int | None = None) -> None:
        """Creates or replaces the file with ``data`` (text is written as UTF-8)."""
        if isinstance(data, str):
            data = data.encode()
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            async with sftp.open(path, "wb") as f:
                await f.write(data)
            if mode is not None:
                await sftp.chmod(path, mode)

    async def list(self, path: str = ".") -> list[FileInfo]:
        """The entries of a directory (without ``.`` and ``..``), sorted by name."""
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            names = await sftp.readdir(path)
        entries = [
            _info(posixpath.join(path, str(n.filename)), str(n.filename), n.attrs)
            for n in names
            if n.filename not in (".", "..", b".", b"..")
        ]
        return sorted(entries, key=lambda e: e.name)

    async def stat(self, path: str) -> FileInfo:
        """A path's size, mode and mtime (links are not followed)."""
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            attrs = await sftp.lstat(path)
        return _info(path, posixpath.basename(path.rstrip("/")) or path, attrs)

    async def exists(self, path: str) -> bool:
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            return bool(await sftp.exists(path))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, an empty directory, or with ``recursive`` a whole tree."""
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            attrs = await sftp.lstat(path)
            if statmod.S_ISDIR(attrs.permissions or 0):
                if recursive:
                    await sftp.rmtree(path)
                else:
                    await sftp.rmdir(path)
            else:
                await sftp.remove(path)

    async def rename(self, src: str, dst: str) -> None:
        """Renames ``src`` to ``dst``, replacing ``dst`` if it exists."""
        async with _mapped(src):
            sftp = await (await self._connection()).sftp()
            try:
                await sftp.posix_rename(src, dst)
            except asyncssh.SFTPOpUnsupported:
                await sftp.rename(src, dst)

    async def mkdir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> None:
        async with _mapped(path):
            sftp = await (await self._connection()).sftp()
            if parents:
                await sftp.makedirs(path, exist_ok=exist_ok)
            elif not (exist_ok and await sftp.isdir(path)):
                await sftp.mkdir(path)

    async def upload(self, local: Union[str, os.PathLike[str]], remote: str) -> None:
        """Copies a local file or directory tree into the sandbox (parallel
        requests; modes and mtimes kept)."""
        async with _mapped(remote):
            sftp = await (await self._connection()).sftp()
            await sftp.put(os.fspath(local), remote, recurse=True, preserve=True)

    async def download(
        self,
        remote: str,
        local: Union[str, os.PathLike[str]],
        *,
        max_bytes: Optional[int] = None,
    ) -> None:
        """Copies a file or directory tree out of the sandbox to ``local``.

        What the sandbox says is hostile, so it is checked before anything local
        is touched: names must be one component (no ``/``, ``.`` or ``..``);
        links in the sandbox are not copied; a file is copied only if the
        handle opened for it is a regular file (not a link swapped to
        ``/dev/zero``), no further than the size listed for it; modes keep only
        their ``0o777`` bits (no setuid); each file lands through a new local
        temporary file (``O_EXCL | O_NOFOLLOW``) renamed into place, so nothing
        is written through a local link. ``max_bytes`` bounds the bytes written
        in all (a sandbox can list a sparse terabyte): past it, FileError.
        """
        local = os.fspath(local)
        budget = _Budget(max_bytes)
        async with _mapped(remote):
            sftp = await (await self._connection()).sftp()
            attrs = await sftp.stat(remote)
            if statmod.S_ISDIR(attrs.permissions or 0):
                await self._download_tree(sftp, remote, local, budget)
            else:
                await _download_file(sftp, remote, local, attrs.size or 0, budget)

    async def _download_tree(self, sftp: asyncssh.SFTPClient, remote: str, local: str, budget: "_Budget") -> None:
        _refuse_local_link(local)
        os.makedirs(local, exist_ok=True)
        for entry in await sftp.readdir(remote):
            name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode("utf-8", "replace")
            if name in (".", ".."):
                continue
            if "/" in name or "\x00" in name or not name:
                raise FileError(f"{remote}: the sandbox listed a bad name {name!r}; refused")
            mode = entry.attrs.permissions or 0
            src, dst = posixpath.join(remote, name), os.path.join(local, name)
            if statmod.S_ISDIR(mode):
                await self._download_tree(sftp, src, dst, budget)
            elif statmod.S_ISREG(mode):
                await _download_file(sftp, src, dst, entry.attrs.size or 0, budget)
            # Links, devices, sockets: not copied.


class _Budget:
    """What a download may still write (None: no bound)."""

    def __init__(self, left: Optional[int]) -> None:
        self.left = left

    def take(self, n: int, path: str) -> None:
        if self.left is not None:
            if n > self.left:
                raise FileError(f"{path}: past the download's max_bytes; not copied")
            self.left -= n


_CHUNK = 4 << 20


async def _download_file(sftp: asyncssh.SFTPClient, src: str, dst: str, listed: int, budget: _Budget) -> None:
    """Copies the regular file ``src`` to ``dst``: at most ``listed`` bytes,
    through a temporary file that no local link can redirect."""
    _refuse_local_link(dst)
    async with sftp.open(src, "rb") as f:
        # The handle, not the name: the name may have become a link since.
        attrs = await f.stat()
        if not statmod.S_ISREG(attrs.permissions or 0):
            raise FileError(f"{src}: not a regular file when opened; not copied")
        size = min(listed, attrs.size or 0)
        budget.take(size, src)
        directory = os.path.dirname(dst) or "."
        part = os.path.join(directory, f".{secrets.token_hex(8)}.warren-part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(part, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                done = 0
                while done < size:
                    data = await f.read(min(_CHUNK, size - done), done)
                    if not data:
                        break  # shrank since: what there was
                    data = data if isinstance(data, bytes) else data.encode()
                    out.write(data)
                    done += len(data)
                out.flush()
                os.fchmod(out.fileno(), statmod.S_IMODE(attrs.permissions or 0o600) & 0o777)
                if attrs.mtime is not None:
                    os.utime(out.fileno(), (attrs.atime or attrs.mtime, attrs.mtime))
            os.replace(part, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise


def _refuse_local_link(path: str) -> None:
    if os.path.islink(path):
        raise FileError(f"{path} is a local symbolic link: not written through")


_KINDS = {"W": "write", "D": "delete", "M": "move", "O": "overflow"}


class AsyncWatch:
    """Changes under a directory, as they happen (see :meth:`AsyncFiles.watch`)."""

    def __init__(self, process: "AsyncProcess") -> None:
        self._p = process
        self._buffer = b""
        self._ready: list[FileChange] = []

    def __aiter__(self) -> "AsyncWatch":
        return self

    async def __anext__(self) -> FileChange:
        change = await self.next(None)
        if change is None:
            raise StopAsyncIteration
        return change

    async def next(self, timeout: Optional[float] = None) -> Optional[FileChange]:
        """The next change; None when the watcher ended or ``timeout`` passed."""
        import asyncio

        while not self._ready:
            try:
                chunk = await asyncio.wait_for(self._p.stdout.next_chunk(), timeout)
            except asyncio.TimeoutError:
                return None
            if chunk is None:
                if self._p.stderr.data():
                    raise FileError(self._p.stderr.data().decode("utf-8", "replace").strip())
                return None
            self._buffer += chunk
            *records, self._buffer = self._buffer.split(b"\x00")
            for record in records:
                fields = record.decode("utf-8", "replace").split("\t")
                if len(fields) < 2 or not fields[0].isdigit() or fields[1] not in _KINDS:
                    continue
                path = fields[2] if len(fields) > 2 else ""
                dest = fields[3] if len(fields) > 3 else None
                self._ready.append(FileChange(int(fields[0]), _KINDS[fields[1]], path, dest))
        return self._ready.pop(0)

    async def close(self) -> None:
        await self._p.kill()

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
