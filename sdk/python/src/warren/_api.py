"""The HTTP API: one ``httpx.AsyncClient`` per :class:`~warren.AsyncWarren`, errors
turned into the typed exceptions of :mod:`warren.errors`."""

from __future__ import annotations

import ssl
from typing import Any, Optional

import httpx

from ._config import Config
from .errors import ApiError, ConfigError, ConnectionLost, api_error


class Api:
    def __init__(self, config: Config, timeout: float) -> None:
        verify: Any = True
        if config.ca_cert:
            # The system's roots plus the gateway's own (self-signed) certificate.
            try:
                context = ssl.create_default_context()
                context.load_verify_locations(cafile=config.ca_cert)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"the CA certificate {config.ca_cert}: {e}") from None
            verify = context
        self.url = config.url
        self._http = httpx.AsyncClient(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=timeout,
            verify=verify,
        )

    async def request(self, method: str, path: str, body: Optional[dict[str, Any]] = None, params: Optional[dict[str, Any]] = None) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as e:
            hint = ""
            if "CERTIFICATE" in str(e).upper():
                hint = " (a gateway with a self-signed certificate: pass ca_cert= or set WARREN_CACERT)"
            raise ConnectionLost(f"cannot reach the Warren API at {self.url}: {e}{hint}") from None
        if response.is_success:
            return response
        request_id = response.headers.get("x-request-id")
        try:
            error = response.json()["error"]
            code, message = str(error.get("code", "")), str(error.get("message", ""))
            request_id = error.get("request_id") or request_id
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message = "", response.text[:500] or response.reason_phrase
        raise api_error(response.status_code, code, message, request_id)

    async def json(self, method: str, path: str, body: Optional[dict[str, Any]] = None, params: Optional[dict[str, Any]] = None) -> Any:
        response = await self.request(method, path, body, params)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError("the API answered something that is not JSON", status=response.status_code) from None

    async def text(self, path: str) -> str:
        return (await self.request("GET", path)).text

    async def aclose(self) -> None:
        await self._http.aclose()
