"""One held SSH connection to a sandbox through the gateway, shared by every exec
channel, the SFTP client and port forwards; made again on the next call after it
drops.

It logs in as ``ssh <sandbox-id>@gateway`` does for ``warren sync``: the API key as
the password, the gateway's host key pinned to what ``GET /v1/host-keys`` gave (any
other key is refused; nothing is ever accepted unseen).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Sequence

import asyncssh

from .errors import AuthenticationRefused, ConnectionLost, HostKeyMismatch, SshError

#: Channels (commands, terminals) open at once on one connection. The agent serves
#: 64 per connection; the rest are left for SFTP, forwards and kills.
DEFAULT_MAX_CHANNELS = 32


def parse_host_keys(lines: str | Sequence[str]) -> list[asyncssh.SSHKey]:
    """Public keys from known_hosts lines (``[host]:port ssh-ed25519 AAAA…``) or bare
    ``ssh-ed25519 AAAA…`` lines."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    keys = []
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        # A known_hosts line starts with the host pattern; a bare key with its type.
        if not (words[0].startswith("ssh-") or words[0].startswith("ecdsa-")):
            words = words[1:]
        if len(words) < 2:
            continue
        try:
            keys.append(asyncssh.import_public_key(f"{words[0]} {words[1]}"))
        except (asyncssh.KeyImportError, ValueError):
            continue
    return keys


def _ciphers() -> list[str]:
    preferred = ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
    rest = [a.decode() for a in asyncssh.encryption.get_default_encryption_algs()]
    return [a for a in preferred if a in rest] + [a for a in rest if a not in preferred]


_CIPHERS = _ciphers()


class _Client(asyncssh.SSHClient):
    def __init__(self, holder: "SshConnection") -> None:
        self._holder = holder

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._holder._lost(self)


class SshConnection:
    """The connection of one sandbox (or one persistent session's user name)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        host_keys: list[asyncssh.SSHKey],
        *,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        connect_timeout: float = 30.0,
    ) -> None:
        if not host_keys:
            raise HostKeyMismatch("no gateway host key to pin: refusing to connect")
        self.host, self.port, self.username = host, port, username
        self._password = password
        self._host_keys = host_keys
        self._connect_timeout = connect_timeout
        self._conn: Optional[asyncssh.SSHClientConnection] = None
        self._client: Optional[_Client] = None
        self._sftp: Optional[asyncssh.SFTPClient] = None
        self._lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(max_channels)
        self._closed = False

    def __repr__(self) -> str:
        return f"SshConnection({self.username}@{self.host}:{self.port})"

    def _lost(self, client: Optional["_Client"] = None) -> None:
        # A late notice from a connection already replaced changes nothing.
        if client is not None and client is not self._client:
            return
        self._conn = None
        self._sftp = None
        self._client = None

    async def get(self) -> asyncssh.SSHClientConnection:
        """The live connection, connecting if there is none."""
        conn = self._conn
        if conn is not None:
            return conn
        async with self._lock:
            if self._closed:
                raise ConnectionLost("this sandbox object was closed")
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        try:
            conn, client = await asyncio.wait_for(
                asyncssh.create_connection(
                    lambda: _Client(self),
                    self.host,
                    self.port,
                    username=self.username,
                    password=self._password,
                    known_hosts=(self._host_keys, [], []),
                    client_keys=None,
                    agent_path=None,
                    config=None,
                    preferred_auth="password",
                    # AES-GCM first (AES-NI; what the gateway's tunnel prefers too),
                    # then asyncssh's defaults.
                    encryption_algs=_CIPHERS,
                    keepalive_interval=15,
                    keepalive_count_max=4,
                ),
                self._connect_timeout,
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyMismatch(
                f"the gateway at {self.host}:{self.port} presented a host key that is not "
                f"the pinned one; refused ({e.reason})"
            ) from None
        except asyncssh.PermissionDenied as e:
            raise AuthenticationRefused(
                f"the gateway refused the login as {self.username} ({e.reason})"
            ) from None
        except asyncio.TimeoutError:
            raise ConnectionLost(f"no SSH connection to {self.host}:{self.port} within {self._connect_timeout:g}s") from None
        except (OSError, asyncssh.Error) as e:
            raise ConnectionLost(f"cannot connect to {self.host}:{self.port} over SSH: {e}") from None
        self._client = client if isinstance(client, _Client) else None
        return conn

    async def sftp(self) -> asyncssh.SFTPClient:
        conn = await self.get()
        sftp = self._sftp
        if sftp is not None:
            return sftp
        async with self._lock:
            if self._sftp is None or self._conn is not conn:
                try:
                    self._sftp = await conn.start_sftp_client()
                except (OSError, asyncssh.Error) as e:
                    raise ssh_error(e) from None
            return self._sftp

    async def open_session(self, factory: Any, command: Optional[str], **kwargs: Any) -> tuple["asyncssh.SSHClientChannel[bytes]", Any]:
        """Opens a session channel; a connection found dead is made again once
        (nothing ran on it yet)."""
        for attempt in (0, 1):
            conn = await self.get()
            try:
                if command is None:
                    return await conn.create_session(factory, encoding=None, **kwargs)
                return await conn.create_session(factory, command, encoding=None, **kwargs)
            except asyncssh.ChannelOpenError as e:
                if attempt == 0 and self._conn is None:
                    continue
                raise SshError(f"the sandbox refused a channel: {e.reason}") from None
            except (OSError, asyncssh.Error) as e:
                if attempt == 0 and (self._conn is None or self._conn is conn):
                    self._lost()
                    continue
                raise ssh_error(e) from None
        raise ConnectionLost("the SSH connection dropped twice while opening a channel")

    async def run_plain(self, command: str, timeout: float = 30.0) -> tuple[Optional[int], bytes]:
        """A small helper command outside the channel limit (kills, probes)."""
        conn = await self.get()
        try:
            result = await asyncio.wait_for(
                conn.run(command, encoding=None, stdin=asyncssh.DEVNULL, request_pty=False),
                timeout,
            )
        except (OSError, asyncssh.Error) as e:
            raise ssh_error(e) from None
        out = result.stdout if isinstance(result.stdout, bytes) else b""
        return result.exit_status, out

    async def close(self) -> None:
        self._closed = True
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncio.TimeoutError, OSError, asyncssh.Error):
                pass


def ssh_error(e: BaseException) -> SshError:
    if isinstance(e, asyncssh.PermissionDenied):
        return AuthenticationRefused(str(e))
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return HostKeyMismatch(str(e))
    if isinstance(e, (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError, BrokenPipeError)):
        return ConnectionLost(f"the SSH connection dropped: {e}")
    return SshError(str(e))
