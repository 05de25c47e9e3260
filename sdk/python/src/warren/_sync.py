"""The synchronous SDK: thin wrappers that run the async core on one private event
loop in a daemon thread. Every call blocks only its caller's thread, so the sync API
works from many threads at once and from inside another event loop's thread (it
blocks that thread, but never deadlocks or needs ``nest_asyncio``)."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, Iterator, Mapping, Optional, Sequence, TypeVar, Union

from . import aio
from ._files import AsyncFiles, AsyncWatch
from ._process import AsyncProcess, Input, OutputCallback, OutputStream
from ._terminal import AsyncTerminal
from .models import CommandResult, FileChange, FileInfo, PullRequest, SandboxInfo

__all__ = ["Warren", "Sandbox", "Process", "Terminal", "Files", "Forward", "Watch"]

T = TypeVar("T")


class _Loop:
    """The SDK's own event loop, started on first use."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None
    _thread: Optional[threading.Thread] = None
    _pid = 0

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            # After a fork the thread is gone: start a new loop in the child.
            if cls._loop is None or cls._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="warren-sdk-loop", daemon=True)
                thread.start()
                cls._loop, cls._thread, cls._pid = loop, thread, os.getpid()
            return cls._loop


def _run(coro: Coroutine[Any, Any, T]) -> T:
    loop = _Loop.get()
    if threading.current_thread() is _Loop._thread:
        coro.close()
        raise RuntimeError(
            "the synchronous Warren API was called from inside one of its own callbacks "
            "(on_stdout/on_stderr): use the async API there, or leave the callback quickly"
        )
    future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _build(factory: Any, *args: Any, **kwargs: Any) -> Any:
    # Built on the loop's thread: httpx and asyncssh objects belong to that loop.
    return factory(*args, **kwargs)


class Warren:
    """A Warren gateway (synchronous). See :class:`warren.aio.AsyncWarren` for the
    arguments: ``url``/``api_key`` default to ``WARREN_URL``/``WARREN_API_KEY``,
    else to what ``warren login`` saved."""

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        ca_cert: Optional[str] = None,
        timeout: float = 600.0,
        host_keys: Union[str, Sequence[str], None] = None,
        max_channels: int = 32,
    ) -> None:
        self._a: aio.AsyncWarren = _run(
            _build(aio.AsyncWarren, url, api_key, ca_cert=ca_cert, timeout=timeout, host_keys=host_keys, max_channels=max_channels)
        )
        self.url = self._a.url

    def __repr__(self) -> str:
        return f"Warren({self.url!r})"

    def __enter__(self) -> "Warren":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        _run(self._a.close())

    def create(self, image: Optional[str] = None, *, keep: bool = False, **fields: Any) -> "Sandbox":
        """Creates a sandbox; the fields are :meth:`warren.aio.AsyncWarren.create`'s."""
        return Sandbox(_run(self._a.create(image, keep=keep, **fields)))

    def sandbox(self, id: str, *, keep: bool = True) -> "Sandbox":
        """An existing sandbox of yours by id."""
        return Sandbox(_run(self._a.sandbox(id, keep=keep)))

    def sandboxes(self, *, include_deleted: bool = False, page_size: int = 50) -> Iterator[SandboxInfo]:
        """Your sandboxes, newest first; each page is fetched as the iteration
        reaches it."""
        cursor: Optional[str] = None
        while True:
            page = _run(self._a.sandboxes_page(cursor=cursor, limit=page_size, include_deleted=include_deleted))
            yield from page.sandboxes
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def host_keys(self) -> list[str]:
        """The pinned gateway host keys (OpenSSH public key lines)."""
        return [k.export_public_key().decode().strip() for k in _run(self._a.host_keys())]


class Sandbox:
    """One sandbox (synchronous). ``with Sandbox.create(...) as sb:`` deletes it at
    the end unless ``keep=True``."""

    def __init__(self, inner: aio.AsyncSandbox) -> None:
        self._a = inner
        self.id = inner.id
        self._files: Optional[Files] = None

    def __repr__(self) -> str:
        return f"Sandbox({self.id!r})"

    @property
    def token(self) -> Optional[str]:
        return self._a.token

    @property
    def keep(self) -> bool:
        return self._a.keep

    @keep.setter
    def keep(self, value: bool) -> None:
        self._a.keep = value

    @classmethod
    def create(cls, image: Optional[str] = None, *, client: Optional[Warren] = None, keep: bool = False, **fields: Any) -> "Sandbox":
        """Creates a sandbox on ``client`` (default: ``Warren()``). Fields:
        ``repo``, ``branch``, ``env``, ``cpus``, ``memory_mb``, ``idle_timeout_s``,
        ``ttl_s``, ``network``, ``extra``."""
        inner = client._a if client is not None else None
        return cls(_run(aio.AsyncSandbox.create(image, client=inner, keep=keep, **fields)))

    @classmethod
    def connect(cls, id: str, *, client: Optional[Warren] = None, keep: bool = True) -> "Sandbox":
        inner = client._a if client is not None else None
        return cls(_run(aio.AsyncSandbox.connect(id, client=inner, keep=keep)))

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        _run(self._a.__aexit__(*exc))

    def close(self) -> None:
        _run(self._a.close())

    def info(self) -> SandboxInfo:
        return _run(self._a.info())

    def wait_running(self, timeout: float = 600.0, every: float = 0.5) -> SandboxInfo:
        """Waits until a create made with ``wait=False`` is done (see
        :meth:`warren.aio.AsyncSandbox.wait_running`)."""
        return _run(self._a.wait_running(timeout, every))

    def stop(self) -> SandboxInfo:
        return _run(self._a.stop())

    def start(self) -> SandboxInfo:
        return _run(self._a.start())

    def delete(self) -> None:
        _run(self._a.delete())

    def keepalive(self) -> None:
        _run(self._a.keepalive())

    def pull_request(self, title: str, body: Optional[str] = None, base: Optional[str] = None) -> PullRequest:
        return _run(self._a.pull_request(title, body=body, base=base))

    def snapshot(self, name: Optional[str] = None) -> dict[str, Any]:
        """Captures the sandbox's file system; see :meth:`warren.aio.AsyncSandbox.snapshot`."""
        return _run(self._a.snapshot(name))

    def fork(self, count: int = 1, *, branch_prefix: Optional[str] = None, keep: bool = False) -> "list[Sandbox]":
        """``count`` copies of this sandbox, each on its own branch."""
        forks = _run(self._a.fork(count, branch_prefix=branch_prefix, keep=keep))
        return [Sandbox(f) for f in forks]

    def run(
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
        """See :meth:`warren.aio.AsyncSandbox.run`. Callbacks run on the SDK's
        thread: keep them quick."""
        return _run(self._a.run(command, cwd=cwd, env=env, stdin=stdin, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr, check=check))

    def spawn(
        self,
        command: str,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> "Process":
        return Process(_run(self._a.spawn(command, cwd=cwd, env=env, on_stdout=on_stdout, on_stderr=on_stderr)))

    def terminal(self, cols: int = 80, rows: int = 24, *, command: Optional[str] = None, env: Optional[dict[str, str]] = None) -> "Terminal":
        return Terminal(_run(self._a.terminal(cols, rows, command=command, env=env)))

    def session(self, name: str, cols: int = 80, rows: int = 24, *, read_only: bool = False) -> "Terminal":
        return Terminal(_run(self._a.session(name, cols, rows, read_only=read_only)))

    @property
    def files(self) -> "Files":
        if self._files is None:
            self._files = Files(self._a.files)
        return self._files

    def forward(self, remote_port: int, *, remote_host: str = "127.0.0.1", local_port: int = 0) -> "Forward":
        return Forward(_run(self._a.forward(remote_port, remote_host=remote_host, local_port=local_port)))

    def forward_ports(self) -> list[int]:
        """The ports the sandbox's devcontainer.json forwards (see
        :meth:`warren.aio.AsyncSandbox.forward_ports`)."""
        return _run(self._a.forward_ports())

    def forward_all(self, *, same_ports: bool = True) -> "list[Forward]":
        """Forwards each of :meth:`forward_ports` (see
        :meth:`warren.aio.AsyncSandbox.forward_all`)."""
        return [Forward(f) for f in _run(self._a.forward_all(same_ports=same_ports))]


class Output:
    """A process's stdout or stderr: iterate for bytes as they come."""

    def __init__(self, inner: OutputStream) -> None:
        self._a = inner

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = _run(self._a.next_chunk())
            if chunk is None:
                return
            yield chunk

    def data(self) -> bytes:
        """Everything received so far."""
        return self._a.data()


class Stdin:
    def __init__(self, inner: Any) -> None:
        self._a = inner

    def write(self, data: Union[bytes, str]) -> None:
        _run(self._a.write(data))

    def close(self) -> None:
        _run(self._a.close())


class Process:
    """A command started by :meth:`Sandbox.spawn`."""

    def __init__(self, inner: AsyncProcess) -> None:
        self._a = inner
        self.command = inner.command
        self.stdin = Stdin(inner.stdin)
        self.stdout = Output(inner.stdout)
        self.stderr = Output(inner.stderr)

    @property
    def pid(self) -> Optional[int]:
        """Its process group id in the sandbox, once known."""
        return self._a.pid

    @property
    def returncode(self) -> Optional[int]:
        return self._a.returncode

    def result(self) -> CommandResult:
        return self._a.result()

    def wait(self, timeout: Optional[float] = None) -> CommandResult:
        """Waits for it to end; after ``timeout`` its process group is killed and
        :class:`~warren.errors.CommandTimeout` raised."""
        return _run(self._a.wait(timeout))

    def kill(self, signal: Union[str, int] = "KILL") -> None:
        """Signals its whole process group."""
        _run(self._a.kill(signal))

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        _run(self._a.__aexit__(*exc))


class Terminal:
    """A PTY (see :meth:`Sandbox.terminal`)."""

    def __init__(self, inner: AsyncTerminal) -> None:
        self._a = inner

    def write(self, data: Union[bytes, str]) -> None:
        _run(self._a.write(data))

    def read(self, timeout: Optional[float] = None) -> bytes:
        return _run(self._a.read(timeout))

    def read_until(self, expected: Any, timeout: float = 10.0) -> bytes:
        return _run(self._a.read_until(expected, timeout))

    def resize(self, cols: int, rows: int) -> None:
        _run(self._a.resize(cols, rows))

    @property
    def closed(self) -> bool:
        return self._a.closed

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        return _run(self._a.wait(timeout))

    def close(self) -> None:
        _run(self._a.close())

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Files:
    """``sb.files``: files in the sandbox over SFTP (see
    :class:`warren._files.AsyncFiles`)."""

    def __init__(self, inner: AsyncFiles) -> None:
        self._a = inner

    def read(self, path: str) -> bytes:
        return _run(self._a.read(path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return _run(self._a.read_text(path, encoding))

    def write(self, path: str, data: Union[bytes, str], *, mode: Optional[int] = None) -> None:
        _run(self._a.write(path, data, mode=mode))

    def list(self, path: str = ".") -> list[FileInfo]:
        return _run(self._a.list(path))

    def stat(self, path: str) -> FileInfo:
        return _run(self._a.stat(path))

    def exists(self, path: str) -> bool:
        return _run(self._a.exists(path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        _run(self._a.remove(path, recursive=recursive))

    def rename(self, src: str, dst: str) -> None:
        _run(self._a.rename(src, dst))

    def mkdir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> None:
        _run(self._a.mkdir(path, parents=parents, exist_ok=exist_ok))

    def upload(self, local: Union[str, "os.PathLike[str]"], remote: str) -> None:
        _run(self._a.upload(local, remote))

    def download(self, remote: str, local: Union[str, "os.PathLike[str]"], *, max_bytes: Optional[int] = None) -> None:
        _run(self._a.download(remote, local, max_bytes=max_bytes))

    def watch(self, path: str) -> "Watch":
        """Follows changes under the directory ``path``: iterate it; ``close()``."""
        return Watch(_run(self._a.watch(path)))


class Watch:
    """Changes under a directory (see :meth:`Files.watch`)."""

    def __init__(self, inner: "AsyncWatch") -> None:
        self._a = inner

    def __iter__(self) -> Iterator[FileChange]:
        while True:
            change = _run(self._a.next(None))
            if change is None:
                return
            yield change

    def next(self, timeout: Optional[float] = None) -> Optional[FileChange]:
        """The next change; None when it ended or ``timeout`` passed."""
        return _run(self._a.next(timeout))

    def close(self) -> None:
        _run(self._a.close())

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Forward:
    """A local port forwarded into the sandbox (see :meth:`Sandbox.forward`)."""

    def __init__(self, inner: aio.AsyncForward) -> None:
        self._a = inner
        self.host = inner.host
        self.port = inner.port
        self.address = inner.address
        self.url = inner.url

    def close(self) -> None:
        _run(self._a.close())

    def __enter__(self) -> "Forward":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
