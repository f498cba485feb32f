"""Log rules: how a rule matches a line (substring, anchored pattern, both), which rules are
refused, and how a backend classifies a line (the first matching rule wins, colour codes left
out). Every built-in backend's rules, against the servers' own lines and against client text
quoted in their request logs, are in ``test_log_rules_backends.py``."""

from __future__ import annotations

import re

import pytest

from pyworker import Backend, Endpoint, Job, LogAction, LogRule


def _backend(*rules: LogRule) -> Backend:
    def parse(payload: object) -> Job:
        return Job(workload=1.0, body=b"{}", upstream_path="/")

    return Backend(
        name="rules",
        model_server_url="http://127.0.0.1:1",
        endpoints=(Endpoint(route="/x", parse=parse, benchmark_payload=lambda rng: {}),),
        benchmark_route="/x",
        log_rules=rules,
    )


# -- the rule itself ---------------------------------------------------------------------------
def test_a_substring_rule_matches_anywhere_as_the_readme_writes_it() -> None:
    rule = LogRule(action=LogAction.MODEL_LOADED, substring="server has started")
    assert rule.pattern is None
    assert rule.matches("2026-01-01 INFO infer server has started on :5001")
    assert not rule.matches("infer server has stopped")


def test_a_pattern_matches_at_the_start_of_the_line_only() -> None:
    rule = LogRule(action=LogAction.MODEL_ERROR, pattern=r"Error: ShardFailed\b")
    assert isinstance(rule.pattern, re.Pattern)
    assert rule.matches("Error: ShardFailed")
    assert not rule.matches("prompt: 'Error: ShardFailed'")
    assert not rule.matches("Error: ShardFailedAgain")
    ended = LogRule(
        action=LogAction.MODEL_LOADED, pattern=r"INFO: +Application startup complete\.$"
    )
    assert ended.matches("INFO:     Application startup complete.")
    assert not ended.matches("INFO:     Application startup complete. Or is it?")


def test_substring_and_pattern_must_both_hold() -> None:
    rule = LogRule(
        action=LogAction.MODEL_ERROR,
        substring="CUDA out of memory",
        pattern=re.compile(r"torch\.OutOfMemoryError: "),
    )
    assert rule.matches("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
    assert not rule.matches("torch.OutOfMemoryError: HIP out of memory")
    assert not rule.matches("INFO prompt: 'torch.OutOfMemoryError: CUDA out of memory'")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, ValueError),
        ({"substring": ""}, ValueError),
        ({"pattern": r"(?:Error)?"}, ValueError),  # matches the empty line: every line
        ({"pattern": r".*"}, ValueError),
        ({"substring": "ready\n"}, ValueError),  # lines come without their ending
        ({"pattern": "(unclosed"}, re.error),
        ({"pattern": re.compile(b"bytes")}, TypeError),
        ({"substring": 3}, TypeError),
    ],
)
def test_rules_are_validated(fields: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        # The TypeError rows' wrong types are the test.
        LogRule(action=LogAction.INFO, **fields)  # type: ignore[arg-type]


def test_the_action_must_be_a_log_action() -> None:
    with pytest.raises(TypeError):
        # A string for the action: the wrong type is the test.
        LogRule(action="model_loaded", substring="x")  # type: ignore[arg-type]


# -- classify ----------------------------------------------------------------------------------
def test_the_first_matching_rule_wins_and_ignore_rules_hide_the_line() -> None:
    request = LogRule(action=LogAction.IGNORE, pattern=r"INFO \S+ Received request ")
    failed = LogRule(action=LogAction.MODEL_ERROR, substring="CUDA out of memory")
    backend = _backend(request, failed)
    line = "INFO 05-01 Received request cmpl-1: prompt: 'CUDA out of memory'"
    assert failed.matches(line)  # a bare substring would be fooled...
    assert backend.classify(line) is None  # ...but the request log rule comes first
    assert backend.classify("CUDA out of memory") is failed
    assert _backend(failed, request).classify(line) is failed  # order decides


def test_colour_codes_are_left_out_before_matching() -> None:
    ready = LogRule(action=LogAction.MODEL_LOADED, pattern=r"\S+ +INFO router: Connected$")
    backend = _backend(ready)
    coloured = (
        "\x1b[2m2025-05-01T10:00:30Z\x1b[0m \x1b[32m INFO\x1b[0m router\x1b[2m:\x1b[0m Connected"
    )
    assert backend.classify(coloured) is ready
    assert backend.classify("\x1b[2mnothing\x1b[0m") is None
