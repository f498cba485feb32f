"""The fault soak's judgement (bench/soakexpect.py, bench/soaktally.py), without running the soak.

The soak itself takes minutes (``python -m bench --only soak``); what must never drift is the
part that decides its verdicts: what the hello_world fake must answer (checked here against
the real fake), the checks of streamed events, and which requests count as lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from fakes import start_fake

# bench/ is not an installed package: it runs from the repository's root.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench import soakload  # noqa: E402
from bench.soakconn import Connection, frame  # noqa: E402
from bench.soakexpect import EventCheck, Expected, check_json  # noqa: E402
from bench.soaktally import (  # noqa: E402
    answers_in_window,
    first_sign_in_answers,
    first_sign_in_status,
    states_seen,
    tally,
)

SEED = 7


def _request(path: str, payload: dict[str, object]) -> bytes:
    return frame(path, json.dumps(payload).encode())


async def test_expected_answers_are_the_fakes(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(
        nursery,
        "backends.hello_world.server",
        "--load-delay",
        "0",
        "--token-rate",
        "5000",
        "--seed",
        str(SEED),
        log_path=tmp_path / "model.log",
    )
    assert fake.port is not None
    expected = Expected(SEED)
    with trio.fail_after(10):
        conn = await Connection.open(fake.port)
        for prompt, count in (("soak json-0-1: hello 0.5", 9), ("ünïcode ✓ prompt", 3)):
            payload = {"prompt": prompt, "max_response_tokens": count}
            await conn.send(_request("/generate", payload))
            status, _ = await conn.head()
            body = await conn.body()
            assert status == 200
            assert check_json(body, expected.json(prompt, count)) == ""
            # Another prompt's answer is not taken for this one's.
            assert check_json(body, expected.json(prompt + "!", count)) != ""

            await conn.send(_request("/generate_stream", payload))
            status, headers = await conn.head()
            assert status == 200
            assert b"chunked" in headers[b"transfer-encoding"]
            check = EventCheck(expected.events(prompt, count))
            while (data := await conn.chunk()) is not None:
                check.feed(data)
            assert check.complete_and_right() == ""
            assert conn.idle
        # A check that stops reading early leaves the connection unfit for another request.
        await conn.send(_request("/generate_stream", {"prompt": "x", "max_response_tokens": 50}))
        await conn.head()
        await conn.chunk()
        assert not conn.idle
        await conn.aclose()


def test_event_check_finds_what_is_wrong() -> None:
    events = Expected(SEED).events("p", 3)
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)

    split = EventCheck(events)
    for i in range(0, len(raw), 7):  # any chunking
        split.feed(raw[i : i + 7])
    assert split.complete_and_right() == ""

    short = EventCheck(events)
    short.feed(raw.split(b"\n\n", 1)[1])  # the first token missing
    assert short.complete_and_right().startswith("event 0")

    cut = EventCheck(events)
    cut.feed(raw[: raw.rfind(b"data:")])  # no final event
    assert cut.complete_and_right() == "3 events instead of 4"

    extra = EventCheck(events)
    extra.feed(raw + raw[:20] + b"\n\n")
    assert "more events" in extra.complete_and_right()


def _record(
    kind: str, sent: float, ended: float, outcome: str, status: int = 200
) -> dict[str, Any]:
    return {"k": kind, "s": sent, "e": ended, "st": status, "o": outcome}


def test_lost_and_corrupted_are_decided_by_the_fault_windows() -> None:
    records = [
        _record("json", 1.0, 1.1, soakload.OK),
        _record("json", 2.0, 2.1, soakload.STATUS, 502),  # clean: lost
        _record("stream", 9.5, 10.2, soakload.BROKEN, 200),  # in flight at the fault: exposed
        _record("json", 11.0, 11.1, soakload.STATUS, 502),  # inside the window: exposed
        _record("json", 12.0, 12.1, soakload.RETRYABLE, 503),  # clean, but retryable
        _record("json", 13.0, 13.1, soakload.CORRUPT),  # clean: lost and corrupted
        _record("json", 10.5, 10.6, soakload.CORRUPT),  # exposed: corrupted all the same
        _record("json", 21.0, 21.1, soakload.TIMEOUT, 0),  # autoscaler outage: no excuse
        _record("json", 30.0, 30.1, soakload.STATUS, 502),  # worker not ready: not judged
    ]
    result = tally(
        records,
        windows=[(10.0, 11.5)],
        ready_at=lambda t: t < 29.0,
        outages=[(20.0, 25.0)],
    )
    assert [r["s"] for r in result.lost] == [2.0, 13.0, 21.0]
    assert [r["s"] for r in result.corrupted] == [13.0, 10.5]
    assert result.clean == 5
    assert result.lost_during_outage == 1
    assert result.not_ready_outside_faults == 1
    assert result.by_kind["json"]["status:502"] == 3


def test_signs_of_a_fault() -> None:
    statuses = [(0.0, "ready", ""), (12.0, "loading", ""), (14.0, "ready", "")]
    assert first_sign_in_status(statuses, 10.0, 20.0) == (12.0, "loading")
    assert first_sign_in_status(statuses, 15.0, 20.0) is None
    assert states_seen(statuses, 10.0, 20.0) == "ready → loading → ready"
    records = [
        _record("abort", 9.0, 10.5, soakload.BROKEN),  # the client's own doing: no sign
        _record("json", 10.0, 10.8, soakload.STATUS, 502),
    ]
    assert first_sign_in_answers(records, 10.0, 20.0) == (10.8, "json: 502")
    records.append(_record("stream", 9.0, 24.0, soakload.OK))  # stalled, then answered
    assert answers_in_window(records, 10.0, 20.0) == "right 1, 502 x1, broken x1; slowest 15.0 s"
