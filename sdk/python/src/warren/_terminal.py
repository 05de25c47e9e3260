"""A terminal (PTY) on an exec or shell channel, for programs that drive
interactive tools: write keys, read the screen's bytes, resize."""

from __future__ import annotations

import asyncio
import re
from typing import Optional, Union

import asyncssh

from ._ssh import SshConnection, ssh_error
from .errors import CommandTimeout

_TERM = "xterm-256color"


class _Session(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    def __init__(self, terminal: "AsyncTerminal") -> None:
        self._t = terminal

    def data_received(self, data: bytes, datatype: Optional[int]) -> None:
        self._t._buffer += data
        self._t._changed.set()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._t._done.set()
        self._t._changed.set()


class AsyncTerminal:
    """A PTY in the sandbox running the login shell (or ``command``)."""

    def __init__(self, conn: SshConnection, own_connection: bool) -> None:
        self._conn = conn
        self._own = own_connection
        self._buffer = bytearray()
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._chan: asyncssh.SSHClientChannel  # type: ignore[type-arg]

    async def _start(self, command: Optional[str], cols: int, rows: int, env: Optional[dict[str, str]]) -> None:
        self._chan, _ = await self._conn.open_session(
            lambda: _Session(self),
            command,
            request_pty=True,
            term_type=_TERM,
            term_size=(cols, rows),
            env=env or {},
        )

    async def write(self, data: Union[bytes, str]) -> None:
        """Types ``data`` (``"\\x03"`` is Ctrl-C)."""
        if isinstance(data, str):
            data = data.encode()
        try:
            self._chan.write(data)
        except (OSError, asyncssh.Error) as e:
            raise ssh_error(e) from None

    async def read(self, timeout: Optional[float] = None) -> bytes:
        """What the terminal printed since the last read; waits up to ``timeout``
        seconds for something when nothing is there (b"" at the end or on timeout)."""
        if not self._buffer and not self._done.is_set():
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def read_until(self, expected: Union[bytes, str, "re.Pattern[bytes]"], timeout: float = 10.0) -> bytes:
        """Reads until ``expected`` (bytes, text or a bytes regex) appears; returns
        everything read up to and including it. :class:`CommandTimeout` if it does
        not within ``timeout`` seconds (what came stays readable)."""
        if isinstance(expected, str):
            expected = expected.encode()
        pattern = expected if isinstance(expected, re.Pattern) else re.compile(re.escape(expected))
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            match = pattern.search(self._buffer)
            if match:
                data = bytes(self._buffer[: match.end()])
                del self._buffer[: match.end()]
                return data
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self._done.is_set():
                from .models import CommandResult

                raise CommandTimeout(
                    f"terminal waiting for {pattern.pattern!r}", timeout, None,
                    CommandResult(None, None, bytes(self._buffer)),
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def resize(self, cols: int, rows: int) -> None:
        self._chan.change_terminal_size(cols, rows)

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Waits for its program to exit; its exit status (None after a signal)."""
        await asyncio.wait_for(self._done.wait(), timeout)
        status = self._chan.get_exit_status()
        return None if status is None or status < 0 else status

    async def close(self) -> None:
        """Hangs up (the shell gets SIGHUP, as with ssh)."""
        if not self._done.is_set():
            self._chan.close()
            try:
                await asyncio.wait_for(self._done.wait(), 5)
            except asyncio.TimeoutError:
                pass
        if self._own:
            await self._conn.close()

    async def __aenter__(self) -> "AsyncTerminal":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_terminal(conn: SshConnection, command: Optional[str], cols: int, rows: int, env: Optional[dict[str, str]] = None, own_connection: bool = False) -> AsyncTerminal:
    terminal = AsyncTerminal(conn, own_connection)
    try:
        await terminal._start(command, cols, rows, env)
    except BaseException:
        if own_connection:
            await conn.close()
        raise
    return terminal
