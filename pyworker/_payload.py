"""Validation of client payloads with per-field error messages (answered as 422)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

_MISSING = object()


class PayloadError(Exception):
    """A request's fields are missing or wrong.

    Args:
        errors: maps each bad field to its message (nested mappings for nested objects).
    """

    def __init__(self, errors: Mapping[str, Any]) -> None:
        super().__init__(errors)
        self.errors = dict(errors)

    def __str__(self) -> str:
        return json.dumps(self.errors)


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages ("integer", "array", …)."""
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class Fields:
    """Reads fields from a JSON object, collecting every error before raising one PayloadError.

    Example::

        fields = Fields(payload)
        prompt = fields.string("prompt")
        max_tokens = fields.integer("max_tokens", default=16, minimum=1)
        fields.check()          # raises PayloadError naming every bad field

    Args:
        data: the decoded JSON value; anything but an object is itself an error.
    """

    def __init__(self, data: object) -> None:
        self.errors: dict[str, Any] = {}
        if isinstance(data, dict):
            self.data: dict[str, Any] = data
        else:
            self.data = {}
            self.errors[""] = f"must be a JSON object, not {json_type_name(data)}"

    def _get(self, name: str, default: Any) -> Any:
        if "" in self.errors:
            # The value is not an object at all: that one message says it; listing every
            # field as missing would only bury it.
            return default
        value = self.data.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                self.errors[name] = "missing parameter"
            return _MISSING if default is _MISSING else default
        return value

    def string(self, name: str, *, default: Any = _MISSING, max_length: int | None = None) -> Any:
        """A string field (``default`` makes it optional; null counts as absent)."""
        value = self._get(name, default)
        if value is _MISSING or value is default:
            return value
        if not isinstance(value, str):
            self.errors[name] = f"must be a string, not {json_type_name(value)}"
        elif max_length is not None and len(value) > max_length:
            self.errors[name] = f"must be at most {max_length} characters"
        return value

    def integer(
        self,
        name: str,
        *,
        default: Any = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        """An integer field, with optional bounds (booleans are not integers)."""
        value = self._get(name, default)
        if value is _MISSING or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.errors[name] = f"must be an integer, not {json_type_name(value)}"
        elif minimum is not None and value < minimum:
            self.errors[name] = f"must be at least {minimum}"
        elif maximum is not None and value > maximum:
            self.errors[name] = f"must be at most {maximum}"
        return value

    def number(
        self,
        name: str,
        *,
        default: Any = _MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> Any:
        """A finite number field, with optional bounds."""
        value = self._get(name, default)
        if value is _MISSING or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.errors[name] = f"must be a number, not {json_type_name(value)}"
        elif not math.isfinite(value):
            self.errors[name] = "must be a finite number"
        elif minimum is not None and value < minimum:
            self.errors[name] = f"must be at least {minimum}"
        elif maximum is not None and value > maximum:
            self.errors[name] = f"must be at most {maximum}"
        return value

    def boolean(self, name: str, *, default: Any = _MISSING) -> Any:
        """A boolean field."""
        value = self._get(name, default)
        if value is _MISSING or value is default:
            return value
        if not isinstance(value, bool):
            self.errors[name] = f"must be a boolean, not {json_type_name(value)}"
        return value

    def obj(self, name: str, *, default: Any = _MISSING) -> Any:
        """A nested JSON object field."""
        value = self._get(name, default)
        if value is _MISSING or value is default:
            return value
        if not isinstance(value, dict):
            self.errors[name] = f"must be a JSON object, not {json_type_name(value)}"
        return value

    def nested(self, name: str, errors: Mapping[str, Any]) -> None:
        """Record errors found inside the nested object ``name``."""
        if errors:
            self.errors[name] = dict(errors)

    def check(self) -> None:
        """Raise :class:`PayloadError` if any field was bad."""
        if self.errors:
            raise PayloadError(self.errors)
