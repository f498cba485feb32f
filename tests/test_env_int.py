"""pyworker.env_int: how backends read an integer setting from the environment they are given."""

from __future__ import annotations

import pytest

from pyworker import ConfigError, env_int


def test_unset_or_blank_is_the_default() -> None:
    assert env_int({}, "N", 16) == 16
    assert env_int({"N": "  "}, "N", 16) == 16
    assert env_int({}, "N") is None


def test_a_value_at_or_above_the_minimum() -> None:
    assert env_int({"N": " 32 "}, "N", 16) == 32
    assert env_int({"N": "0"}, "N", 4, minimum=0) == 0


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "sixteen", "1e3"])
def test_anything_else_names_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match=f"N must be an integer of at least 1, not '{text}'"):
        env_int({"N": text}, "N", 16)
