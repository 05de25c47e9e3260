"""The asynchronous SDK: :class:`AsyncWarren` (the API) and :class:`AsyncSandbox`
(one sandbox: lifecycle over the API; commands, terminals, files and ports over one
held SSH connection). The synchronous :mod:`warren` wraps these."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, Optional, Sequence, Union

import asyncssh

from . import _process
from ._api import Api
from ._config import resolve
from ._files import AsyncFiles
from ._process import AsyncProcess, Input, OutputCallback
from ._ssh import DEFAULT_MAX_CHANNELS, SshConnection, parse_host_keys, ssh_error
from ._terminal import AsyncTerminal, open_terminal
from .errors import HostKeyMismatch, RunnerError
from .models import CommandResult, PullRequest, SandboxInfo

__all__ = ["AsyncWarren", "AsyncSandbox", "AsyncForward", "SandboxPage"]

_UNSET: Any = object()


class SandboxPage:
    """One page of ``GET /v1/sandboxes``."""

    def __init__(self, sandboxes: list[SandboxInfo], next_cursor: Optional[str]) -> None:
        self.sandboxes = sandboxes
        self.next_cursor = next_cursor


class AsyncWarren:
    """A Warren gateway, reached through its HTTP API.

    ``url`` and ``api_key`` default to ``WARREN_URL`` / ``WARREN_API_KEY``, else to
    what ``warren login`` saved; ``ca_cert`` (or ``WARREN_CACERT``, or the saved
    login's) is a PEM certificate to trust for HTTPS besides the system's roots.
    ``host_keys`` pins the gateway's SSH host key (known_hosts lines) instead of
    asking ``GET /v1/host-keys`` once.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        ca_cert: Optional[str] = None,
        timeout: float = 600.0,
        host_keys: Union[str, Sequence[str], None] = None,
        max_channels: int = DEFAULT_MAX_CHANNELS,
    ) -> None:
        self._config = resolve(url, api_key, ca_cert)
        self.url = self._config.url
        self._api = Api(self._config, timeout)
        self._host_keys: Optional[list[asyncssh.SSHKey]] = (
            parse_host_keys(host_keys) if host_keys is not None else None
        )
        self._max_channels = max_channels

    def __repr__(self) -> str:
        return f"AsyncWarren({self.url!r})"

    async def __aenter__(self) -> "AsyncWarren":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._api.aclose()

    async def host_keys(self) -> list[asyncssh.SSHKey]:
        """The gateway's SSH host keys to pin (asked once)."""
        if self._host_keys is None:
            keys = parse_host_keys(await self._api.text("/v1/host-keys"))
            if not keys:
                raise HostKeyMismatch("the API gave no gateway host key to pin")
            self._host_keys = keys
        return self._host_keys

    async def create(
        self,
        image: Optional[str] = None,
        *,
        repo: Optional[str] = None,
        branch: Optional[str] = None,
        forward_agent: bool = False,
        env: Optional[Mapping[str, str]] = None,
        cpus: Optional[float] = None,
        memory_mb: Optional[int] = None,
        idle_timeout_s: Optional[int] = None,
        ttl_s: Optional[int] = None,
        network: Union[str, Mapping[str, Any], None] = None,
        disk_mb: Optional[int] = None,
        devcontainer: Optional[bool] = None,
        snapshot: Optional[str] = None,
        wait: bool = True,
        extra: Optional[Mapping[str, Any]] = None,
        keep: bool = False,
    ) -> "AsyncSandbox":
        """Creates a sandbox (``POST /v1/sandboxes``); it is running when this returns,
        unless ``wait=False``: then it may still be ``creating`` (a repository's
        devcontainer.json being followed); :meth:`AsyncSandbox.wait_running` waits.

        The fields are the API's ``CreateSandbox``. ``network`` is ``"all"``,
        ``"none"``, or ``{"mode": "allow", "cidrs": [...]}``.
        ``extra`` passes fields newer than this SDK as they are. Used as a context
        manager the sandbox is deleted at the end unless ``keep``.
        """
        body: dict[str, Any] = {}
        fields = {
            "image": image, "repo": repo, "branch": branch, "cpus": cpus,
            "memory_mb": memory_mb, "idle_timeout_s": idle_timeout_s, "ttl_s": ttl_s,
            "disk_mb": disk_mb, "devcontainer": devcontainer, "snapshot": snapshot,
        }
        body.update({k: v for k, v in fields.items() if v is not None})
        if forward_agent:
            body["forward_agent"] = True
        if not wait:
            body["wait"] = False
        if env:
            body["env"] = dict(env)
        if network is not None:
            body["network"] = {"mode": network} if isinstance(network, str) else dict(network)
        if extra:
            body.update(extra)
        created = await self._api.json("POST", "/v1/sandboxes", body)
        sandbox = AsyncSandbox(self, SandboxInfo.from_json(created), keep=keep)
        sandbox.token = created.get("token")
        return sandbox

    async def sandbox(self, id: str, *, keep: bool = True) -> "AsyncSandbox":
        """An existing sandbox of yours (:class:`~warren.errors.NotFound` otherwise).
        As a context manager it is kept unless ``keep=False``."""
        info = await self._info(id)
        return AsyncSandbox(self, info, keep=keep)

    async def _info(self, id: str) -> SandboxInfo:
        return SandboxInfo.from_json(await self._api.json("GET", f"/v1/sandboxes/{_seg(id)}"))

    async def sandboxes_page(self, *, cursor: Optional[str] = None, limit: int = 50, include_deleted: bool = False) -> SandboxPage:
        """One page of your sandboxes, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if include_deleted:
            params["include_deleted"] = "true"
        page = await self._api.json("GET", "/v1/sandboxes", params=params)
        return SandboxPage([SandboxInfo.from_json(s) for s in page.get("sandboxes", [])], page.get("next_cursor"))

    async def sandboxes(self, *, include_deleted: bool = False, page_size: int = 50) -> list[SandboxInfo]:
        """All your sandboxes, newest first, fetched a page at a time (see
        :meth:`iter_sandboxes` to stop early)."""
        return [s async for s in self.iter_sandboxes(include_deleted=include_deleted, page_size=page_size)]

    async def iter_sandboxes(self, *, include_deleted: bool = False, page_size: int = 50):  # type: ignore[no-untyped-def]
        """Your sandboxes one by one, each page fetched when needed."""
        cursor: Optional[str] = None
        while True:
            page = await self.sandboxes_page(cursor=cursor, limit=page_size, include_deleted=include_deleted)
            for s in page.sandboxes:
                yield s
            if not page.next_cursor:
                return
            cursor = page.next_cursor


def ports_of_config(config: str) -> list[int]:
    """The ports of an SSH config's ``LocalForward`` lines, 1024 and up, once each."""
    ports: list[int] = []
    for line in config.splitlines():
        words = line.split()
        if len(words) < 2 or words[0].lower() != "localforward":
            continue
        text = words[1].rsplit(":", 1)[-1]
        if text.isdigit() and 1024 <= int(text) <= 65535 and int(text) not in ports:
            ports.append(int(text))
    return ports[:32]


def _seg(id: str) -> str:
    """A path segment: ids never hold these, and a bad one must stay one segment."""
    from urllib.parse import quote

    return quote(id, safe="")


class AsyncForward:
    """A local port forwarded to a port in the sandbox (like ``ssh -L``)."""

    def __init__(self, listener: asyncssh.SSHListener, remote_host: str, remote_port: int) -> None:
        self._listener = listener
        self.host = "127.0.0.1"
        self.port: int = listener.get_port()
        self.remote_host = remote_host
        self.remote_port = remote_port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, for a web server in the sandbox."""
        return f"http://{self.address}"

    async def close(self) -> None:
        self._listener.close()
        await self._listener.wait_closed()

    async def __aenter__(self) -> "AsyncForward":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSandbox:
    """One sandbox. Its SSH connection is made on first use, shared by every call
    (commands, files, terminals, forwards) and made again after it drops."""

    def __init__(self, client: AsyncWarren, info: SandboxInfo, *, keep: bool = True, owns_client: bool = False) -> None:
        self.client = client
        self.id = info.id
        self._info = info
        self.keep = keep
        self._owns_client = owns_client
        #: The sandbox token from create (shown once; an SSH password for this
        #: sandbox alone), or None.
        self.token: Optional[str] = None
        self._conn: Optional[SshConnection] = None
        self._conn_lock = asyncio.Lock()
        self._files: Optional[AsyncFiles] = None

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.id!r})"

    # -- construction ---------------------------------------------------------

    @classmethod
    async def create(cls, image: Optional[str] = None, *, client: Optional[AsyncWarren] = None, keep: bool = False, **fields: Any) -> "AsyncSandbox":
        """:meth:`AsyncWarren.create` on ``client`` (default: ``AsyncWarren()``)."""
        owns = client is None
        client = client or AsyncWarren()
        try:
            sandbox = await client.create(image, keep=keep, **fields)
        except BaseException:
            if owns:
                await client.close()
            raise
        sandbox._owns_client = owns
        return sandbox

    @classmethod
    async def connect(cls, id: str, *, client: Optional[AsyncWarren] = None, keep: bool = True) -> "AsyncSandbox":
        """An existing sandbox by id."""
        owns = client is None
        client = client or AsyncWarren()
        try:
            sandbox = await client.sandbox(id, keep=keep)
        except BaseException:
            if owns:
                await client.close()
            raise
        sandbox._owns_client = owns
        return sandbox

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if not self.keep:
                await self.delete()
        finally:
            await self.close()

    async def close(self) -> None:
        """Closes the SSH connection (and the client, if this sandbox made it); the
        sandbox itself is left as it is."""
        conn, self._conn, self._files = self._conn, None, None
        if conn is not None:
            await conn.close()
        if self._owns_client:
            await self.client.close()

    # -- lifecycle (HTTP API) ------------------------------------------------------

    async def info(self) -> SandboxInfo:
        """The sandbox as the API shows it now."""
        self._info = await self.client._info(self.id)
        return self._info

    async def wait_running(self, timeout: float = 600.0, every: float = 0.5) -> SandboxInfo:
        """Waits until a create made with ``wait=False`` is done: the sandbox's info
        once it runs; :class:`~warren.errors.RunnerError` with why if its create
        failed; :class:`TimeoutError` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = await self.info()
            if info.state == "running":
                return info
            if info.state in ("failed", "deleted"):
                events = await self.client._api.json("GET", f"/v1/sandboxes/{_seg(self.id)}/events")
                reasons = [e.get("reason", "") for e in events.get("events", [])]
                why = next((r[len("create failed: "):] for r in reversed(reasons) if r.startswith("create failed: ")), "see its events")
                raise RunnerError(f"the create of {self.id} failed: {why}", code="runner_error")
            if loop.time() > deadline:
                raise TimeoutError(f"{self.id} was still {info.state} after {timeout} s")
            await asyncio.sleep(every)

    async def stop(self) -> SandboxInfo:
        await self._drop_connection()
        self._info = SandboxInfo.from_json(await self.client._api.json("POST", f"/v1/sandboxes/{_seg(self.id)}/stop"))
        return self._info

    async def start(self) -> SandboxInfo:
        self._info = SandboxInfo.from_json(await self.client._api.json("POST", f"/v1/sandboxes/{_seg(self.id)}/start"))
        return self._info

    async def delete(self) -> None:
        await self._drop_connection()
        await self.client._api.request("DELETE", f"/v1/sandboxes/{_seg(self.id)}")

    async def keepalive(self) -> None:
        """Counts as activity for the idle reaper."""
        await self.client._api.request("POST", f"/v1/sandboxes/{_seg(self.id)}/keepalive")

    async def pull_request(self, title: str, body: Optional[str] = None, base: Optional[str] = None) -> PullRequest:
        """Commits the sandbox's changes on its branch, pushes with the create
        request's ``GITHUB_TOKEN`` and opens a pull request."""
        request: dict[str, Any] = {"title": title}
        if body is not None:
            request["body"] = body
        if base is not None:
            request["base"] = base
        pr = await self.client._api.json("POST", f"/v1/sandboxes/{_seg(self.id)}/pull-requests", request)
        return PullRequest.from_json(pr)

    async def snapshot(self, name: Optional[str] = None) -> dict[str, Any]:
        """Captures the sandbox's file system (``POST /v1/sandboxes/{id}/snapshots``);
        the answer's ``id`` (``snp_…``) is what ``create(snapshot=…)`` takes.
        Processes are not captured."""
        request: dict[str, Any] = {} if name is None else {"name": name}
        return await self.client._api.json("POST", f"/v1/sandboxes/{_seg(self.id)}/snapshots", request)

    async def fork(self, count: int = 1, *, branch_prefix: Optional[str] = None, keep: bool = False) -> "list[AsyncSandbox]":
        """``count`` copies of this sandbox as it is now, each its own sandbox on its
        own git branch (``POST /v1/sandboxes/{id}/fork``)."""
        request: dict[str, Any] = {"count": count}
        if branch_prefix is not None:
            request["branch_prefix"] = branch_prefix
        forked = await self.client._api.json("POST", f"/v1/sandboxes/{_seg(self.id)}/fork", request)
        forks = []
        for created in forked.get("sandboxes", []):
            sandbox = AsyncSandbox(self.client, SandboxInfo.from_json(created), keep=keep)
            sandbox.token = created.get("token")
            forks.append(sandbox)
        return forks

    # -- the SSH data plane -------------------------------------------------------

    async def _connection(self) -> SshConnection:
        if self._conn is None:
            async with self._conn_lock:
                if self._conn is None:
                    keys = await self.client.host_keys()
                    info = self._info
                    self._conn = SshConnection(
                        info.ssh_host, info.ssh_port, info.ssh_user, self.client._config.api_key,
                        keys, max_channels=self.client._max_channels,
                    )
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn, self._files = self._conn, None, None
        if conn is not None:
            await conn.close()

    async def run(
        self,
        command: str,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Input = None,
        timeout: Optional[float] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        check: bool = False,
    ) -> CommandResult:
        """Runs ``command`` with the user's shell and waits for it.

        ``stdin`` is sent then closed (without it the command reads EOF);
        ``on_stdout``/``on_stderr`` get text as it comes. After ``timeout`` seconds
        the command's whole process group is killed and
        :class:`~warren.errors.CommandTimeout` raised; with ``check`` an exit other
        than 0 raises :class:`~warren.errors.CommandFailed` with the output.
        """
        return await _process.run(
            await self._connection(), command, cwd=cwd, env=env, stdin=stdin,
            timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr, check=check,
        )

    async def spawn(
        self,
        command: str,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> AsyncProcess:
        """Starts ``command`` and returns at once: write its ``stdin``, iterate its
        ``stdout``/``stderr``, ``wait()`` or ``kill()`` it."""
        return await _process.spawn(
            await self._connection(), command, cwd=cwd, env=env, on_stdout=on_stdout, on_stderr=on_stderr,
        )

    async def terminal(self, cols: int = 80, rows: int = 24, *, command: Optional[str] = None, env: Optional[dict[str, str]] = None) -> AsyncTerminal:
        """A PTY running the login shell (or ``command``)."""
        return await open_terminal(await self._connection(), command, cols, rows, env)

    async def session(self, name: str, cols: int = 80, rows: int = 24, *, read_only: bool = False) -> AsyncTerminal:
        """Attaches to the persistent session ``name`` (made on first use), like
        ``ssh -t <id>+<name>@gw``; it outlives this object. Its own connection."""
        conn = await self._connection()
        user = f"{self.id}+{name}" + ("+ro" if read_only else "")
        own = SshConnection(conn.host, conn.port, user, self.client._config.api_key, await self.client.host_keys(), max_channels=2)
        return await open_terminal(own, None, cols, rows, own_connection=True)

    @property
    def files(self) -> AsyncFiles:
        """Files in the sandbox over SFTP."""
        if self._files is None:
            self._files = AsyncFiles(self._connection)
        return self._files

    async def forward_ports(self) -> list[int]:
        """The ports the sandbox's devcontainer.json forwards (``forwardPorts``, 1024
        and up): the ``LocalForward`` lines of ``GET /v1/sandboxes/{id}/ssh-config``,
        which ``warren ssh`` and ``warren config-ssh`` open too. Empty without one."""
        text = await self.client._api.text(f"/v1/sandboxes/{_seg(self.id)}/ssh-config")
        return ports_of_config(text)

    async def forward_all(self, *, same_ports: bool = True) -> list[AsyncForward]:
        """Forwards every port of :meth:`forward_ports`, each from the same port on
        this machine's loopback (as ``warren ssh`` does; a port busy here raises),
        or from any free one with ``same_ports=False``. Close each when done."""
        opened: list[AsyncForward] = []
        try:
            for port in await self.forward_ports():
                opened.append(await self.forward(port, local_port=port if same_ports else 0))
        except BaseException:
            for f in opened:
                await f.close()
            raise
        return opened

    async def forward(self, remote_port: int, *, remote_host: str = "127.0.0.1", local_port: int = 0) -> AsyncForward:
        """Listens on ``127.0.0.1:local_port`` (any free port by default) and
        forwards each connection to ``remote_host:remote_port`` as seen from the
        sandbox."""
        ssh = await (await self._connection()).get()
        try:
            listener = await ssh.forward_local_port("127.0.0.1", local_port, remote_host, remote_port)
        except (OSError, asyncssh.Error) as e:
            raise ssh_error(e) from None
        return AsyncForward(listener, remote_host, remote_port)
