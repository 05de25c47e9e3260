"""Commands on exec channels: ``run`` and ``spawn``.

Each command runs after a small POSIX-shell prologue, both sent as the channel's
command line and run by the sandbox user's login shell like any ``ssh id@gw cmd``:

    printf '%s\\n' "$$"; cd -- DIR || exit 1; export K='v'; CMD

The agent starts every session in a session of its own (setsid), so ``$$`` is the
process group of everything the command starts; the SDK reads it off the first line
of stdout (and drops that line) so that a timeout or ``kill()`` can signal the whole
group (``kill -s SIG -- -PGID`` on a second channel), not only the shell — an SSH
``signal`` request reaches only the leader, and closing the channel leaves a
command without a terminal running.

The command is the line's last part, in the same shell: the exit status and exit
signal are what ``$SHELL -c CMD`` gives (bash, dash and busybox sh exec the last
command of a ``-c`` line as they exec a lone one), and one shell starts, not two
(an ``exec "$SHELL" -c 'CMD'`` after the prologue cost a second shell's start-up,
about 2 ms of every ``run``). A command that does not parse fails before the
prologue prints anything, and its output is passed on as it is.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import shlex
from typing import AsyncIterator, Callable, Mapping, Optional, Union

import asyncssh

from ._ssh import SshConnection, ssh_error
from .errors import CommandFailed, CommandTimeout, ConnectionLost, SshError
from .models import CommandResult

OutputCallback = Callable[[str], object]
Input = Union[bytes, str, None]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIGNAL = re.compile(r"[A-Z0-9]+\Z")
#: How long to wait for the channel to close after the group was killed.
_KILL_GRACE = 5.0


def wrap(command: str, cwd: Optional[str], env: Optional[Mapping[str, str]]) -> str:
    """The command line actually sent: prologue, then the command (see the module)."""
    parts = ["printf '%s\\n' \"$$\""]
    if cwd is not None:
        parts.append(f"cd -- {shlex.quote(cwd)} || exit 1")
    for name, value in (env or {}).items():
        if not _NAME.match(name):
            raise ValueError(f"env: {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        parts.append(f"export {name}={shlex.quote(str(value))}")
    parts.append(command)
    return "; ".join(parts)


def signal_name(sig: Union[str, int]) -> str:
    if isinstance(sig, int):
        return str(sig)
    name = sig.upper().removeprefix("SIG")
    if not _SIGNAL.match(name):
        raise ValueError(f"not a signal name: {sig!r}")
    return name


class OutputStream:
    """One of a process's outputs: iterate it (``async for chunk in p.stdout``) for
    bytes as they come. Everything is also kept for the final result."""

    def __init__(self, callback: Optional[OutputCallback]) -> None:
        self._chunks: list[bytes] = []
        self._queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue()
        self._callback = callback
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.closed = False

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._queue.put_nowait(data)
        if self._callback is not None:
            text = self._decoder.decode(data)
            if text:
                self._callback(text)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        if self._callback is not None:
            text = self._decoder.decode(b"", final=True)
            if text:
                self._callback(text)

    def data(self) -> bytes:
        """Everything received so far."""
        return b"".join(self._chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def next_chunk(self) -> Optional[bytes]:
        """The next chunk, or None at the end."""
        if self._queue.empty() and self.closed:
            return None
        chunk = await self._queue.get()
        if chunk is None:
            self._queue.put_nowait(None)  # later readers see the end too
        return chunk


class _Session(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    def __init__(self, process: "AsyncProcess") -> None:
        self._p = process

    def data_received(self, data: bytes, datatype: Optional[int]) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._p.stderr._feed(data)
        else:
            self._p._stdout_data(data)

    def eof_received(self) -> bool:
        self._p._outputs_done()
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._p._channel_closed(exc)


class AsyncStdin:
    """A process's standard input."""

    def __init__(self, process: "AsyncProcess") -> None:
        self._p = process
        self.closed = False

    async def write(self, data: Union[bytes, str]) -> None:
        if isinstance(data, str):
            data = data.encode()
        if self.closed:
            raise ValueError("stdin is closed")
        chan = self._p._chan
        try:
            chan.write(data)
        except (OSError, asyncssh.Error) as e:
            raise ssh_error(e) from None

    async def close(self) -> None:
        """End of input (EOF)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._p._chan.write_eof()
        except (OSError, asyncssh.Error):
            pass  # the channel is gone: there is no one to read it


class AsyncProcess:
    """A command running in the sandbox (from :meth:`AsyncSandbox.spawn`)."""

    def __init__(self, conn: SshConnection, command: str, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]) -> None:
        self._conn = conn
        self.command = command
        self.stdout = OutputStream(on_stdout)
        self.stderr = OutputStream(on_stderr)
        self.stdin = AsyncStdin(self)
        #: The process group id (the command's pid), once known.
        self.pid: Optional[int] = None
        self._header = bytearray()
        self._pid_known = asyncio.Event()
        self._done = asyncio.Event()
        self._lost: Optional[Exception] = None
        self._chan: asyncssh.SSHClientChannel  # type: ignore[type-arg]
        self._slot_held = False
        self._killed_by_timeout = False

    async def _start(self, cwd: Optional[str], env: Optional[Mapping[str, str]]) -> None:
        line = wrap(self.command, cwd, env)
        await self._conn.slots.acquire()
        self._slot_held = True
        try:
            self._chan, _ = await self._conn.open_session(lambda: _Session(self), line, request_pty=False)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._slot_held:
            self._slot_held = False
            self._conn.slots.release()

    def _stdout_data(self, data: bytes) -> None:
        if self._pid_known.is_set():
            self.stdout._feed(data)
            return
        self._header += data
        newline = self._header.find(b"\n")
        if newline < 0 and len(self._header) < 32:
            return
        head, rest = bytes(self._header[:newline]), bytes(self._header[newline + 1 :])
        if newline >= 0 and head.isdigit():
            self.pid = int(head)
        else:  # a shell that did not run the prologue: pass everything on
            rest = bytes(self._header)
        self._header.clear()
        self._pid_known.set()
        self.stdout._feed(rest)

    def _outputs_done(self) -> None:
        if not self._pid_known.is_set():
            self._pid_known.set()
            self.stdout._feed(bytes(self._header))
        self.stdout._close()
        self.stderr._close()

    def _channel_closed(self, exc: Optional[Exception]) -> None:
        self._outputs_done()
        if exc is not None:
            self._lost = exc
        self._release()
        self._done.set()

    @property
    def returncode(self) -> Optional[int]:
        """The exit status, once it exited (None while running or after a signal)."""
        if not self._done.is_set():
            return None
        return self.result().exit_code

    def result(self) -> CommandResult:
        """What it printed so far, and how it ended if it has."""
        exit_code: Optional[int] = None
        sig: Optional[str] = None
        if self._done.is_set():
            signal_info = self._chan.get_exit_signal()
            if signal_info:
                sig = str(signal_info[0]).removeprefix("SIG")
            else:
                exit_code = self._chan.get_exit_status()
        return CommandResult(exit_code, sig, self.stdout.data(), self.stderr.data())

    async def wait(self, timeout: Optional[float] = None) -> CommandResult:
        """Waits for it to end. After ``timeout`` seconds its process group is killed
        and :class:`CommandTimeout` raised. A dropped connection raises
        :class:`ConnectionLost` (the command's fate is then unknown)."""
        try:
            if timeout is None:
                await self._done.wait()
            else:
                await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            self._killed_by_timeout = True
            await self._kill_group("KILL")
            raise CommandTimeout(self.command, timeout or 0, self.pid, self.result()) from None
        except asyncio.CancelledError:
            # Whoever waited is gone: do not leave the command running.
            if not self._done.is_set():
                asyncio.ensure_future(self._kill_group("KILL"))
            raise
        if self._lost is not None and self._chan.get_exit_status() is None:
            raise ConnectionLost(f"the SSH connection dropped while {self.command!r} ran: {self._lost}")
        result = self.result()
        if result.exit_code is None and result.signal is None:
            raise ConnectionLost(f"{self.command!r} ended without an exit status (the connection dropped?)")
        return result

    async def kill(self, signal: Union[str, int] = "KILL") -> None:
        """Sends ``signal`` (a name such as ``"TERM"``, or a number) to the command's
        whole process group."""
        await self._kill_group(signal_name(signal))

    async def _kill_group(self, sig: str) -> None:
        if self._done.is_set():
            return
        try:
            await asyncio.wait_for(self._pid_known.wait(), _KILL_GRACE)
        except asyncio.TimeoutError:
            pass
        if self.pid is not None:
            # `-s SIG -- -PGID` is the form bash, dash and busybox ash all take
            # (busybox complains about the `--` but signals the group).
            try:
                await self._conn.run_plain(f"kill -s {sig} -- -{self.pid} 2>/dev/null", timeout=_KILL_GRACE * 2)
            except (SshError, asyncio.TimeoutError):
                pass
        else:
            try:
                self._chan.send_signal(sig)
            except (OSError, asyncssh.Error):
                pass
        if sig in ("KILL", "9"):
            try:
                await asyncio.wait_for(self._done.wait(), _KILL_GRACE)
            except asyncio.TimeoutError:
                # Something outside the group still holds its pipes: stop listening.
                self._chan.close()
                await self._done.wait()

    async def __aenter__(self) -> "AsyncProcess":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._done.is_set():
            await self._kill_group("KILL")


async def spawn(conn: SshConnection, command: str, *, cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None, on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None) -> AsyncProcess:
    process = AsyncProcess(conn, command, on_stdout, on_stderr)
    await process._start(cwd, env)
    return process


async def run(conn: SshConnection, command: str, *, cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None, stdin: Input = None, timeout: Optional[float] = None, on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None, check: bool = False) -> CommandResult:
    process = await spawn(conn, command, cwd=cwd, env=env, on_stdout=on_stdout, on_stderr=on_stderr)
    if stdin is not None:
        await process.stdin.write(stdin)
    await process.stdin.close()
    result = await process.wait(timeout)
    if check and not result.ok:
        raise CommandFailed(command, result)
    return result
