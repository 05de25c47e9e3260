"""The suite runs against a real Warren (gateway, runner, agent): WARREN_URL and
WARREN_API_KEY must be set (tests/tests/sdk.rs sets them for a stack of its own).
One sandbox is shared by the whole session to keep the suite quick. The checks of
the SDK's types against the OpenAPI document (test_openapi.py) need neither."""

from __future__ import annotations

import os
import warnings
from typing import AsyncIterator, Iterator

import pytest

warnings.filterwarnings("ignore", message=".*DSA.*")

import warren  # noqa: E402
from warren.aio import AsyncSandbox, AsyncWarren  # noqa: E402

IMAGE = os.environ.get("WARREN_TEST_IMAGE", "warren-busybox:latest")


@pytest.fixture(scope="session")
def image() -> str:
    return IMAGE


@pytest.fixture(scope="session")
def client() -> Iterator[warren.Warren]:
    missing = [n for n in ("WARREN_URL", "WARREN_API_KEY") if not os.environ.get(n)]
    if missing:
        pytest.fail(f"the SDK tests need a running Warren: set {', '.join(missing)}")
    with warren.Warren() as c:
        yield c


@pytest.fixture(scope="session")
def sb(client: warren.Warren) -> Iterator[warren.Sandbox]:
    with client.create(IMAGE, memory_mb=256) as s:
        yield s


@pytest.fixture(scope="session")
async def asb(sb: warren.Sandbox) -> AsyncIterator[AsyncSandbox]:
    """The same sandbox through the async twin, on a connection of its own."""
    async with AsyncWarren() as c:
        async with await c.sandbox(sb.id) as s:
            yield s
