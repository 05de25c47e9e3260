"""Where the gateway is and which key to use: arguments, else ``WARREN_URL`` /
``WARREN_API_KEY`` (with ``WARREN_CACERT``), else what ``warren login`` saved in
``$XDG_CONFIG_HOME/warren/config.json`` (default ``~/.config``) — the CLI's order."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ConfigError


@dataclass(frozen=True)
class Config:
    url: str
    api_key: str = ""
    ca_cert: Optional[str] = None

    def __repr__(self) -> str:  # never show the key
        return f"Config(url={self.url!r}, api_key=<redacted>, ca_cert={self.ca_cert!r})"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if base:
        root = Path(base)
    elif os.environ.get("HOME"):
        root = Path(os.environ["HOME"]) / ".config"
    else:
        root = Path(".")
    return root / "warren" / "config.json"


def resolve(url: Optional[str], api_key: Optional[str], ca_cert: Optional[str]) -> Config:
    """The configuration to use; arguments win, each on its own."""
    env_url, env_key = os.environ.get("WARREN_URL"), os.environ.get("WARREN_API_KEY")
    saved: dict[str, object] = {}
    if not (url or env_url) or not (api_key or env_key):
        path = config_path()
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is not valid: {e}") from None
    final_url = url or env_url or saved.get("url")
    final_key = api_key or env_key or saved.get("api_key")
    if not final_url or not final_key:
        raise ConfigError(
            "no Warren gateway configured: pass url= and api_key=, set WARREN_URL and "
            f"WARREN_API_KEY, or run `warren login` (which saves {config_path()})"
        )
    cert = ca_cert or os.environ.get("WARREN_CACERT") or saved.get("ca_cert")
    return Config(url=str(final_url).rstrip("/"), api_key=str(final_key), ca_cert=str(cert) if cert else None)
