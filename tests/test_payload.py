"""Tests for pyworker._payload.Fields: non-finite numbers, and what null means."""

from __future__ import annotations

import json
import math

import pytest

from pyworker._payload import Fields, PayloadError

# Each kind of field, with a valid value of its type.
KINDS = [
    ("string", "text"),
    ("integer", 7),
    ("number", 0.5),
    ("boolean", True),
    ("obj", {"a": 1}),
]
TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "obj": "a JSON object",
}


def _errors(fields: Fields) -> dict[str, object]:
    try:
        fields.check()
    except PayloadError as exc:
        return exc.errors
    return {}


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_number_refuses_non_finite_values_json_loads_produces(text: str) -> None:
    # Python's json module accepts these literals, so a client can send them.
    payload = json.loads(f'{{"plain": {text}, "bounded": {text}, "optional": {text}}}')
    assert not math.isfinite(payload["plain"])
    fields = Fields(payload)
    fields.number("plain")
    fields.number("bounded", minimum=0, maximum=1)  # NaN compares false with either bound
    fields.number("optional", default=1.0)
    assert _errors(fields) == {
        "plain": "must be a finite number",
        "bounded": "must be a finite number",
        "optional": "must be a finite number",
    }


@pytest.mark.parametrize(("kind", "value"), KINDS)
def test_null_with_a_default_means_absent(kind: str, value: object) -> None:
    default = object()
    fields = Fields({"x": None})
    assert getattr(fields, kind)("x", default=default) is default
    assert getattr(fields, kind)("absent", default=default) is default
    assert getattr(fields, kind)("none", default=None) is None
    assert _errors(fields) == {}


@pytest.mark.parametrize(("kind", "value"), KINDS)
def test_null_without_a_default_is_a_type_error_not_missing(kind: str, value: object) -> None:
    fields = Fields({"x": None, "ok": value})
    getattr(fields, kind)("x")
    getattr(fields, kind)("absent")
    assert getattr(fields, kind)("ok") == value
    assert _errors(fields) == {
        "x": f"must be {TYPE_NAMES[kind]}, not null",
        "absent": "missing parameter",
    }
