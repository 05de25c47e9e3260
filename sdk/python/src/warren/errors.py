"""Typed exceptions: the API's ``{code, message, request_id}`` errors, SSH failures
and command outcomes.

Every exception the SDK raises is a :class:`WarrenError`. API errors keep the
gateway's stable ``code`` and the ``request_id`` to quote when asking an operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .models import CommandResult

__all__ = [
    "WarrenError",
    "ConfigError",
    "ApiError",
    "InvalidRequest",
    "ImageNotFound",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "NothingToCommit",
    "NoCapacity",
    "RunnerError",
    "RateLimited",
    "StoreUnavailable",
    "InternalError",
    "SshError",
    "ConnectionLost",
    "AuthenticationRefused",
    "HostKeyMismatch",
    "CommandError",
    "CommandFailed",
    "CommandTimeout",
]


class WarrenError(Exception):
    """The base of every error this SDK raises."""


class ConfigError(WarrenError):
    """No gateway URL or API key was given, in the environment or saved by ``warren login``."""


class ApiError(WarrenError):
    """The HTTP API refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: int = 0,
        request_id: Optional[str] = None,
    ) -> None:
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id or None
        detail = f"{message} ({code}, HTTP {status}"
        if self.request_id:
            detail += f", request {self.request_id}"
        super().__init__(detail + ")")


class InvalidRequest(ApiError):
    """A field was refused (``invalid_request``, 400/422), or the body could not be read."""


class ImageNotFound(InvalidRequest):
    """The image is not on the runner, or not allowed there (``image_not_found``)."""


class Unauthorized(ApiError):
    """The API key is missing, wrong or revoked (``unauthorized``, 401)."""


class Forbidden(ApiError):
    """The account may not do this (``forbidden``, 403)."""


class NotFound(ApiError):
    """No such sandbox of yours (``not_found``, 404); someone else's looks the same."""


class Conflict(ApiError):
    """The sandbox is in a state that does not allow this (``conflict``, 409)."""


class NothingToCommit(Conflict):
    """A pull request was asked for with no changes (``nothing_to_commit``)."""


class NoCapacity(ApiError):
    """No runner is online (``no_runner``) or none has room (``no_capacity``), 503."""


class RunnerError(ApiError):
    """A runner (or GitHub) failed the request (``runner_error``, ``runner_offline``,
    ``upstream_error``)."""


class StoreUnavailable(ApiError):
    """The gateway cannot reach its database (``store_unavailable``, 503): try again
    in a moment."""


class RateLimited(ApiError):
    """Too many bad API keys from this address (``too_many_requests``, 429)."""


class InternalError(ApiError):
    """The gateway failed (``internal``, 500); its log has the details."""


#: Every code of the API's ``ErrorCode`` (tests/test_openapi.py checks the list).
_BY_CODE: dict[str, type[ApiError]] = {
    "invalid_request": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "method_not_allowed": InvalidRequest,
    "image_not_found": ImageNotFound,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "no_repo": Conflict,
    "no_credentials": Conflict,
    "nothing_to_commit": NothingToCommit,
    "no_runner": NoCapacity,
    "no_capacity": NoCapacity,
    "runner_error": RunnerError,
    "runner_offline": RunnerError,
    "upstream_error": RunnerError,
    "too_many_requests": RateLimited,
    "store_unavailable": StoreUnavailable,
    "internal": InternalError,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    429: RateLimited,
    500: InternalError,
    502: RunnerError,
    503: NoCapacity,
}


def api_error(status: int, code: str, message: str, request_id: Optional[str]) -> ApiError:
    """The exception for an API error answer: by its code, else by its status."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ApiError)
    return cls(message, code=code, status=status, request_id=request_id)


class SshError(WarrenError):
    """The SSH data plane (commands, files, ports) failed."""


class ConnectionLost(SshError):
    """The SSH connection dropped or could not be made; the next call reconnects."""


class AuthenticationRefused(SshError):
    """The gateway refused the SSH login (a revoked key, a stopped or deleted sandbox)."""


class HostKeyMismatch(SshError):
    """The gateway's SSH host key is not the pinned one: the connection was refused."""


class CommandError(WarrenError):
    """A command did not end as asked."""


class CommandFailed(CommandError):
    """``run(..., check=True)`` and the command exited non-zero or by a signal.

    ``result`` holds its exit status and everything it printed.
    """

    def __init__(self, command: str, result: "CommandResult") -> None:
        self.command = command
        self.result = result
        how = (
            f"was killed by SIG{result.signal}"
            if result.signal
            else f"exited with status {result.exit_code}"
        )
        super().__init__(
            f"{command!r} {how}\n--- stdout ---\n{_tail(result.stdout)}"
            f"\n--- stderr ---\n{_tail(result.stderr)}"
        )


class CommandTimeout(CommandError, TimeoutError):
    """The command ran past its timeout; its whole process group was killed.

    ``result`` holds what it printed until then.
    """

    def __init__(self, command: str, timeout: float, pid: Optional[int], result: "CommandResult") -> None:
        self.command = command
        self.timeout = timeout
        self.pid = pid
        self.result = result
        group = f"its process group ({pid})" if pid else "it"
        super().__init__(
            f"{command!r} timed out after {timeout:g}s; {group} was killed with SIGKILL"
        )


def _tail(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]
