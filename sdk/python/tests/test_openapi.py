"""The SDK's types against the API's OpenAPI document (docs/openapi.json, which a
gateway test keeps equal to what the gateway serves): a field the API adds, renames
or makes nullable fails here. No Warren needed."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import typing
from typing import Any

import pytest

import warren
from warren import errors
from warren.aio import AsyncWarren

OPENAPI = pathlib.Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())["components"]["schemas"]


def nullable(prop: dict[str, Any]) -> bool:
    kind = prop.get("type")
    return isinstance(kind, list) and "null" in kind


def fields_of(cls: type) -> dict[str, Any]:
    """The dataclass's fields and their resolved types (``raw`` left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "raw"}


def is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def expect_same_fields(cls: type, props: dict[str, dict[str, Any]]) -> None:
    fields = fields_of(cls)
    assert set(fields) == set(props), (
        f"{cls.__name__} has {sorted(set(fields) - set(props))} beyond the API, "
        f"lacks {sorted(set(props) - set(fields))}"
    )
    for name, prop in props.items():
        assert is_optional(fields[name]) == nullable(prop), (
            f"{cls.__name__}.{name}: {fields[name]} but the API's is "
            f"{'nullable' if nullable(prop) else 'never null'}"
        )


def test_sandbox_info_has_the_sandbox_views_fields(schemas: dict[str, Any]) -> None:
    props = dict(schemas["SandboxView"]["properties"])
    del props["ssh"]
    for name, prop in schemas["SshInfo"]["properties"].items():
        props[f"ssh_{name}"] = prop
    expect_same_fields(warren.SandboxInfo, props)


def test_pull_request_has_the_pull_request_views_fields(schemas: dict[str, Any]) -> None:
    expect_same_fields(warren.PullRequest, schemas["PullRequestView"]["properties"])


def test_create_takes_every_field_of_a_create_request(schemas: dict[str, Any]) -> None:
    params = set(inspect.signature(AsyncWarren.create).parameters) - {"self", "extra", "keep"}
    fields = set(schemas["CreateSandbox"]["properties"])
    assert params == fields, (
        f"create() has {sorted(params - fields)} beyond the API, lacks {sorted(fields - params)}"
    )


def test_every_error_code_has_its_exception(schemas: dict[str, Any]) -> None:
    codes = set(schemas["ErrorCode"]["enum"])
    assert set(errors._BY_CODE) == codes, (
        f"mapped but not sent: {sorted(set(errors._BY_CODE) - codes)}; "
        f"sent but not mapped: {sorted(codes - set(errors._BY_CODE))}"
    )
    assert isinstance(errors.api_error(409, "no_credentials", "m", None), errors.Conflict)
