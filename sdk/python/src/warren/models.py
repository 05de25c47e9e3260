"""Plain data the SDK returns: sandboxes, command results, files, pull requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["SandboxInfo", "CommandResult", "FileInfo", "FileChange", "PullRequest"]


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as ``GET /v1/sandboxes/{id}`` shows it (the API's ``SandboxView``,
    with ``ssh`` spread into ``ssh_host``, ``ssh_port`` and ``ssh_user``). Times are
    Unix seconds."""

    id: str
    state: str
    image: str
    repo: Optional[str]
    branch: Optional[str]
    #: The owner's sessions may forward their SSH agent (``ssh -A``).
    forward_agent: bool
    cpus: float
    memory_mb: int
    idle_timeout_s: Optional[int]
    ttl_s: Optional[int]
    #: Disk quota in MiB (None: none enforced, as on the process backend).
    disk_mb: Optional[int]
    runner_id: Optional[str]
    created_at: int
    updated_at: int
    ssh_host: str
    ssh_port: int
    ssh_user: str
    #: The whole JSON object, including fields newer than this SDK.
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "SandboxInfo":
        ssh = v.get("ssh") or {}
        return cls(
            id=v["id"],
            state=v.get("state", ""),
            image=v.get("image", ""),
            repo=v.get("repo"),
            branch=v.get("branch"),
            forward_agent=bool(v.get("forward_agent")),
            cpus=float(v.get("cpus") or 0),
            memory_mb=int(v.get("memory_mb") or 0),
            idle_timeout_s=v.get("idle_timeout_s"),
            ttl_s=v.get("ttl_s"),
            disk_mb=v.get("disk_mb"),
            runner_id=v.get("runner_id"),
            created_at=int(v.get("created_at") or 0),
            updated_at=int(v.get("updated_at") or 0),
            ssh_host=ssh.get("host", "localhost"),
            ssh_port=int(ssh.get("port") or 22),
            ssh_user=ssh.get("user", v["id"]),
            raw=v,
        )


@dataclass(frozen=True)
class CommandResult:
    """How a command ended and what it printed.

    ``exit_code`` is None when a signal ended it (``signal`` is then its name without
    ``SIG``, e.g. ``"KILL"``). ``stdout``/``stderr`` are the output decoded as UTF-8
    (bad bytes replaced); ``stdout_bytes``/``stderr_bytes`` are exactly what came.
    """

    exit_code: Optional[int]
    signal: Optional[str]
    stdout_bytes: bytes = field(repr=False, default=b"")
    stderr_bytes: bytes = field(repr=False, default=b"")

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """Whether it exited with status 0."""
        return self.exit_code == 0 and self.signal is None

    def __repr__(self) -> str:
        return (
            f"CommandResult(exit_code={self.exit_code!r}, signal={self.signal!r}, "
            f"stdout={len(self.stdout_bytes)} bytes, stderr={len(self.stderr_bytes)} bytes)"
        )


@dataclass(frozen=True)
class FileInfo:
    """One entry of a directory, or a path's ``stat``."""

    name: str
    path: str
    size: int
    mode: int
    mtime: int
    is_dir: bool
    is_file: bool
    is_link: bool


@dataclass(frozen=True)
class PullRequest:
    """An opened pull request (the API's ``PullRequestView``)."""

    number: int
    #: The pull request's page.
    url: str
    #: The branch pushed (the pull request's head).
    branch: str = ""
    #: The base it targets.
    base: str = ""
    #: The commit pushed.
    commit: str = ""

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "PullRequest":
        return cls(
            number=int(v["number"]),
            url=str(v["url"]),
            branch=str(v.get("branch", "")),
            base=str(v.get("base", "")),
            commit=str(v.get("commit", "")),
        )


@dataclass(frozen=True)
class FileChange:
    """One change under a watched directory, from the agent's inotify watcher.

    ``kind`` is ``"write"`` (written, created or its mode changed: look at what is
    there now), ``"delete"`` (removed or moved out), ``"move"`` (renamed inside the
    tree, to ``dest``) or ``"overflow"`` (the kernel dropped events: rescan).
    ``path`` and ``dest`` are relative to the watched directory, as the sandbox
    named them (untrusted).
    """

    rev: int
    kind: str
    path: str
    dest: Optional[str] = None
