"""The fault soak's load: mixed clients, each answer checked against what the fake must say.

``python -m bench.soakload SPEC_JSON`` starts its clients at ``spec["start_at"]`` and keeps
them sending until ``spec["stop_at"]`` (both ``time.monotonic()`` readings, a clock every
process on the machine shares, so the scenario can lay its fault timeline over the records),
lets the requests in flight finish (each bounded by ``spec["timeout"]``), writes one JSON line
per request to ``spec["records"]`` and prints a summary line.

The hello_world fake's answers are deterministic for a prompt (its text walks a seeded word
table from an offset that depends on the prompt), so every answer is checked in full
(``bench/soakexpect.py``):

* ``json``: ``POST /generate`` on a keep-alive connection; the answer must be exactly
  ``{"response", "prompt_tokens", "generated_tokens"}`` as the fake computes them;
* ``stream``: ``POST /generate_stream`` on a keep-alive connection; every token event in
  order, then the final ``done`` event, then the end of the body (nothing more);
* ``abort``: a stream that the client abandons after a few events (closing its socket, every
  other time with a reset); the events received before must be the right ones;
* ``bad-payload``: a signed request whose payload is invalid: 422 naming the bad fields;
* ``bad-signature``: a request signed with another key: 401;
* ``conn-per-request``: ``POST /generate``, one new connection per request, closed by the
  client once the answer is read (no ``Connection: close``: many clients do just that).

Every prompt differs (kind, client, sequence number), so an answer delivered to the wrong
request shows as corrupted. Outcomes (:data:`OUTCOMES`) are decided here; whether a failure
counts as lost depends on the faults, which the scenario knows (``bench/soaktally.py`` decides).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import trio

from bench.soakconn import Closed, Connection, frame
from bench.soakexpect import EventCheck, Expected, check_json, check_refusal

OK = "ok"
"""The expected answer: a 200 whose content is exactly right (for ``abort``: right up to where
the client left), the 422 or 401 a bad request must get."""
CORRUPT = "corrupt"
"""A 200 (or the expected refusal) whose content is wrong: the client would be misled."""
RETRYABLE = "retryable"
"""429 or 503: refused with a status the client can act on (retry later or elsewhere)."""
STATUS = "status"
"""Another status (502, 504, 500, or a 200 where a refusal was due)."""
BROKEN = "broken"
"""The connection closed or failed before the answer was complete (a broken answer that the
client can tell from a complete one)."""
TIMEOUT = "timeout"
"""No complete answer within the client's bound."""
CONNECT = "connect-failed"
"""The connection could not be opened."""
OUTCOMES = (OK, CORRUPT, RETRYABLE, STATUS, BROKEN, TIMEOUT, CONNECT)

KINDS = ("json", "stream", "abort", "bad-payload", "bad-signature", "conn-per-request")
"""The kinds of client, in the order the tables show them."""


# -- the clients ---------------------------------------------------------------------------
@attrs.define(eq=False)
class Plan:
    """One request: what to send and how to judge the answer."""

    path: str
    payload: Any
    auth: dict[str, Any]
    judge: Callable[[Connection, int], Any]  # async (conn, status) -> (outcome, detail)
    keep_alive: bool = True
    reset: bool = False


@attrs.define(eq=False)
class Load:
    """The running load: its spec, the records so far, the signatures."""

    spec: dict[str, Any]
    expected: Expected
    records: list[dict[str, Any]] = attrs.Factory(list)
    _reqnum: int = attrs.field(factory=lambda: time.time_ns() // 1000)

    @property
    def port(self) -> int:
        return int(self.spec["port"])

    def envelope(self, auth: dict[str, Any], payload: Any) -> bytes:
        """The signed request body, with the next ``reqnum``."""
        self._reqnum += 1
        return json.dumps(
            {"auth_data": {**auth, "reqnum": self._reqnum}, "payload": payload}
        ).encode()

    async def exchange(self, conn: Connection | None, plan: Plan, kind: str) -> Connection | None:
        """Send one request (on ``conn``, or a new connection) and record its outcome.

        Returns:
            The connection, if it may carry the next request.
        """
        timeout = float(self.spec["timeout"])
        reused = conn is not None
        sent = time.monotonic()
        status = 0
        outcome, detail = TIMEOUT, f"no complete answer within {timeout:g} s"
        keep = False
        with trio.move_on_after(timeout):
            try:
                if conn is None:
                    try:
                        conn = await Connection.open(self.port)
                    except OSError as exc:
                        outcome, detail = CONNECT, str(exc)[:120]
                        conn = None
                if conn is not None:
                    await conn.send(frame(plan.path, self.envelope(plan.auth, plan.payload)))
                    status, headers = await conn.head()
                    outcome, detail = await plan.judge(conn, status)
                    closing = b"close" in headers.get(b"connection", b"").lower()
                    # Reused only once its answer was read to the end: a check may stop early.
                    keep = plan.keep_alive and not closing and outcome != BROKEN and conn.idle
            except Closed as exc:
                outcome, detail = BROKEN, str(exc)
                if reused and status == 0:
                    detail += " (on a reused keep-alive connection, before any answer)"
            except ValueError as exc:  # a malformed head or chunk: the client cannot read it
                outcome, detail = BROKEN, f"malformed answer: {exc}"
        if conn is not None and not keep:
            with trio.move_on_after(1):
                await conn.aclose(reset=plan.reset)
            conn = None
        record = {"k": kind, "s": sent, "e": time.monotonic(), "st": status, "o": outcome}
        if detail:
            record["d"] = detail[:300]
        self.records.append(record)
        return conn


async def _judge_json(conn: Connection, status: int, expected: dict[str, Any]) -> tuple[str, str]:
    body = await conn.body()
    if status == 200:
        wrong = check_json(body, expected)
        return (CORRUPT, wrong) if wrong else (OK, "")
    return _refused(status, body)


def _refused(status: int, body: bytes) -> tuple[str, str]:
    if status in (429, 503):
        return RETRYABLE, ""
    return STATUS, f"{status}: {body[:160]!r}"


async def _judge_stream(
    conn: Connection, status: int, expected: list[dict[str, Any]], stop_after: int | None
) -> tuple[str, str]:
    if status != 200:
        return _refused(status, await conn.body())
    check = EventCheck(expected)
    try:
        while (data := await conn.chunk()) is not None:
            check.feed(data)
            if check.wrong:
                return CORRUPT, check.wrong
            if stop_after is not None and check.received >= stop_after:
                return OK, ""  # the client leaves here, as planned
    except Closed as exc:
        if check.wrong:
            return CORRUPT, check.wrong
        return BROKEN, f"{exc} after {check.received} of {len(expected)} events (all right)"
    wrong = check.complete_and_right()
    return (CORRUPT, wrong) if wrong else (OK, "")


_BAD_PAYLOADS: tuple[tuple[Any, list[str]], ...] = (
    ({"max_response_tokens": 8}, ["prompt"]),
    ({"prompt": 42, "max_response_tokens": 8}, ["prompt"]),
    ({"prompt": "x", "max_response_tokens": 0}, ["max_response_tokens"]),
    ({"prompt": "x", "max_response_tokens": "many"}, ["max_response_tokens"]),
)


async def _judge_refusal(conn: Connection, status: int, want: int, fields: list[str]) -> Any:
    body = await conn.body()
    if status == want:
        wrong = check_refusal(body, fields) if want == 422 else ""
        return (CORRUPT, wrong) if wrong else (OK, "")
    return _refused(status, body)


def plan_for(load: Load, kind: str, rng: random.Random, name: str) -> Plan:
    """The next request of a client of ``kind`` (``name`` makes its prompt unique)."""
    spec = load.spec
    auth = spec["auth"]
    lo, hi = spec["tokens"]
    count = rng.randint(lo, hi)
    prompt = f"soak {name}: {rng.choice(('hello', 'tell me', 'a story of'))} {rng.random():.6f}"
    payload = {"prompt": prompt, "max_response_tokens": count}
    expected = load.expected
    if kind in ("json", "conn-per-request"):
        answer = expected.json(prompt, count)

        async def judge(conn: Connection, status: int) -> Any:
            return await _judge_json(conn, status, answer)

        return Plan("/generate", payload, auth, judge, keep_alive=kind == "json")
    if kind in ("stream", "abort"):
        stop_after = None
        if kind == "abort":
            count = rng.randint(*spec["abort_tokens"])
            payload["max_response_tokens"] = count
            stop_after = rng.randint(1, max(1, count // 4))
        events = expected.events(prompt, count)

        async def judge_stream(conn: Connection, status: int) -> Any:
            return await _judge_stream(conn, status, events, stop_after)

        return Plan(
            "/generate_stream",
            payload,
            auth,
            judge_stream,
            keep_alive=kind == "stream",
            reset=kind == "abort" and rng.random() < 0.5,
        )
    if kind == "bad-payload":
        bad, fields = rng.choice(_BAD_PAYLOADS)

        async def judge_422(conn: Connection, status: int) -> Any:
            return await _judge_refusal(conn, status, 422, fields)

        return Plan("/generate", bad, auth, judge_422)
    if kind == "bad-signature":

        async def judge_401(conn: Connection, status: int) -> Any:
            return await _judge_refusal(conn, status, 401, [])

        return Plan("/generate", payload, spec["bad_auth"], judge_401)
    raise ValueError(f"unknown kind of client: {kind}")


async def client(load: Load, kind: str, index: int) -> None:
    """One client of ``kind``: a request, a pause (``spec["think"][kind]`` on average), again."""
    spec = load.spec
    rng = random.Random(f"{spec['seed']}-{kind}-{index}")
    think = float(spec["think"][kind])
    stop_at = float(spec["stop_at"])
    conn: Connection | None = None
    sequence = 0
    try:
        while time.monotonic() < stop_at:
            sequence += 1
            plan = plan_for(load, kind, rng, f"{kind}-{index}-{sequence}")
            conn = await load.exchange(conn, plan, kind)
            await trio.sleep(rng.uniform(0, 2 * think))
    finally:
        if conn is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await conn.aclose()


async def run(spec: dict[str, Any]) -> Load:
    """Run every client from ``start_at`` until ``stop_at``, then the requests in flight."""
    load = Load(spec=spec, expected=Expected(int(spec["seed"])))
    start_at = float(spec["start_at"])
    await trio.sleep(max(0.0, start_at - time.monotonic()))
    limit = float(spec["stop_at"]) - time.monotonic() + float(spec["timeout"]) + 5.0
    with trio.move_on_after(max(limit, 1.0)):
        async with trio.open_nursery() as nursery:
            clients = [(k, i) for k, n in spec["clients"].items() for i in range(int(n))]
            for kind, index in clients:
                nursery.start_soon(client, load, kind, index)
                # Spread the clients' first requests over the first second.
                await trio.sleep(1.0 / max(len(clients), 1))
    return load


def main() -> int:
    """Run the spec given as the first argument; write the records; print a summary."""
    spec = json.loads(sys.argv[1])
    load = trio.run(run, spec)
    with open(spec["records"], "w") as out:
        for record in load.records:
            out.write(json.dumps(record) + "\n")
    summary = Counter(f"{r['k']}:{r['o']}" for r in load.records)
    print(json.dumps({"requests": len(load.records), "outcomes": dict(summary)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
