"""Warren's Python SDK: sandboxes from programs.

Lifecycle goes through the gateway's HTTP API (httpx); commands, terminals, files
and port forwards go over one SSH connection per sandbox, held and reused
(asyncssh), through the same gateway as ``ssh <id>@gw``::

    from warren import Sandbox

    with Sandbox.create(image="warren-base:latest") as sb:
        print(sb.run("uname -a", check=True).stdout)
        sb.files.write("/workspace/hello.txt", "hi")

``warren.aio`` has the same API as coroutines (:class:`AsyncWarren`,
:class:`AsyncSandbox`).
"""

import warnings

# asyncssh still imports DSA support, which newer cryptography releases deprecate
# loudly at import time; the SDK never uses DSA.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*DSA.*")
    import asyncssh  # noqa: F401

from . import errors
from ._files import FileError, RemoteFileNotFound, RemotePermissionError
from ._sync import Files, Forward, Process, Sandbox, Terminal, Warren, Watch
from .aio import AsyncForward, AsyncSandbox, AsyncWarren
from .errors import (
    ApiError,
    AuthenticationRefused,
    CommandError,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    Conflict,
    ConnectionLost,
    Forbidden,
    HostKeyMismatch,
    ImageNotFound,
    InternalError,
    InvalidRequest,
    NoCapacity,
    NotFound,
    NothingToCommit,
    RateLimited,
    RunnerError,
    SshError,
    StoreUnavailable,
    Unauthorized,
    WarrenError,
)
from .models import CommandResult, FileChange, FileInfo, PullRequest, SandboxInfo

__version__ = "0.1.0"

__all__ = [
    "Warren", "Sandbox", "Process", "Terminal", "Files", "Forward", "Watch",
    "AsyncWarren", "AsyncSandbox", "AsyncForward",
    "CommandResult", "FileChange", "FileInfo", "PullRequest", "SandboxInfo",
    "errors", "WarrenError", "ConfigError", "ApiError", "InvalidRequest", "ImageNotFound",
    "Unauthorized", "Forbidden", "NotFound", "Conflict", "NothingToCommit", "NoCapacity",
    "RunnerError", "RateLimited", "StoreUnavailable", "InternalError", "SshError",
    "ConnectionLost",
    "AuthenticationRefused", "HostKeyMismatch", "CommandError", "CommandFailed",
    "CommandTimeout", "FileError", "RemoteFileNotFound", "RemotePermissionError",
]
