"""Tests for pyworker._auth: the signed messages, parsing auth_data, verifying signatures, the
replay guard. Getting the router's key (fetching, configuring, rotating) is in
``test_pubkey.py``."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import URL, accept, make_auth, refusal, signed
from hypothesis import given
from hypothesis import strategies as st

from pyworker._auth import (
    AuthData,
    Authenticator,
    ReplayGuard,
    Signed,
    message_2024,
    message_2025,
)
from pyworker._payload import PayloadError
from pyworker.devtools import RouterSigner

# --- the signed messages ---------------------------------------------------------------------


def test_message_2024_is_json_dumps_indent_4_byte_for_byte() -> None:
    auth = AuthData(
        signature="x", cost="256", endpoint="grüppe", reqnum=1234, url="http://wörker.example:80"
    )
    expected = (
        b'{\n    "cost": "256",\n    "endpoint": "gr\\u00fcppe",\n    "reqnum": 1234,\n'
        b'    "url": "http://w\\u00f6rker.example:80"\n}'
    )
    assert message_2024(auth) == expected
    literal = {
        "cost": "256",
        "endpoint": "grüppe",
        "reqnum": 1234,
        "url": "http://wörker.example:80",
    }
    assert message_2024(auth) == json.dumps(literal, indent=4).encode()


def test_message_2024_keeps_types_as_received() -> None:
    as_text = AuthData(signature="x", cost="256", endpoint="e", reqnum=1, url=URL)
    as_int = AuthData(signature="x", cost=256, endpoint="e", reqnum=1, url=URL)
    as_float = AuthData(signature="x", cost=256.0, endpoint="e", reqnum=1, url=URL)
    messages = {message_2024(as_text), message_2024(as_int), message_2024(as_float)}
    assert len(messages) == 3
    assert b'"cost": 256,' in message_2024(as_int)


def test_message_2025_is_the_url_only() -> None:
    auth = AuthData(signature="x", cost=1, endpoint="e", reqnum=1, url="http://é.example")
    assert message_2025(auth) == b'{\n    "url": "http://\\u00e9.example"\n}'
    assert message_2025(auth) == json.dumps({"url": "http://é.example"}, indent=4).encode()


# --- parsing ---------------------------------------------------------------------------------


def test_parse_keeps_values_and_ignores_extra_fields(signer: RouterSigner) -> None:
    data = signer.sign(cost="256", endpoint="g", reqnum=5, url=URL)
    auth = AuthData.parse({**data, "request_idx": 7005, "__request_id": "abc", "nested": {}})
    assert auth == AuthData(
        signature=data["signature"], cost="256", endpoint="g", reqnum=5, url=URL, request_idx=7005
    )
    assert auth.idx == 7005  # the router's identity of the request
    assert auth.cost_value == 256.0
    accept(make_auth(signer), auth)
    older = AuthData.parse(data)  # an older router sends no request_idx: reqnum stands in
    assert (older.request_idx, older.idx) == (None, 5)


def test_parse_reports_every_bad_field() -> None:
    with pytest.raises(PayloadError) as info:
        AuthData.parse({"cost": [1], "reqnum": "5", "url": 3, "endpoint": None})
    assert info.value.errors == {
        "signature": "missing parameter",
        "cost": "must be a string or a number, not array",
        "endpoint": "must be a string or a number, not null",
        "reqnum": "must be an integer, not string",
        "url": "must be a string, not integer",
    }


@pytest.mark.parametrize(
    ("value", "kind"), [([], "array"), ("x", "string"), (None, "null"), (3, "integer")]
)
def test_parse_refuses_a_non_object(value: object, kind: str) -> None:
    with pytest.raises(PayloadError) as info:
        AuthData.parse(value)
    assert info.value.errors == {"": f"must be a JSON object, not {kind}"}


def test_parse_refuses_boolean_and_float_reqnum() -> None:
    base = {"signature": "x", "cost": 1, "endpoint": "e", "url": URL}
    for reqnum, kind in [(True, "boolean"), (1.0, "number")]:
        with pytest.raises(PayloadError) as info:
            AuthData.parse({**base, "reqnum": reqnum})
        assert info.value.errors == {"reqnum": f"must be an integer, not {kind}"}


# --- signatures ------------------------------------------------------------------------------


def test_good_signature_passes(signer: RouterSigner) -> None:
    accept(make_auth(signer), signed(signer))


def test_string_cost_signature_does_not_cover_int_cost(signer: RouterSigner) -> None:
    data = signer.sign(cost="256", endpoint="my-group", reqnum=1, url=URL)
    assert refusal(make_auth(signer), AuthData.parse({**data, "cost": 256})).status == 401
    accept(make_auth(signer), AuthData.parse(data))


@pytest.mark.parametrize(
    ("field", "value"),
    [("cost", 257), ("endpoint", "other"), ("reqnum", 2), ("url", "http://127.0.0.1:41235")],
)
def test_tampered_field_fails(signer: RouterSigner, field: str, value: object) -> None:
    data = signer.sign(cost=256, endpoint="my-group", reqnum=1, url=URL)
    error = refusal(make_auth(signer, own_url=None), AuthData.parse({**data, field: value}))
    assert (error.status, error.reason) == (401, "invalid signature")


def test_signature_from_another_key_fails(signer: RouterSigner, other_signer: RouterSigner) -> None:
    error = refusal(make_auth(signer), signed(other_signer))
    assert (error.status, error.reason) == (401, "invalid signature")


def test_2025_message_accepted_by_default(signer: RouterSigner) -> None:
    auth = AuthData.parse(signer.sign_2025(URL, cost=5, endpoint="g", reqnum=9))
    accept(make_auth(signer), auth)


def test_2025_message_refused_when_only_2024_is_accepted(signer: RouterSigner) -> None:
    auth = AuthData.parse(signer.sign_2025(URL, cost=5, endpoint="g", reqnum=9))
    error = refusal(make_auth(signer, accept_2025=False), auth)
    assert (error.status, error.reason) == (401, "invalid signature")
    accept(make_auth(signer, accept_2025=False), signed(signer))


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("not base64!", "signature is not valid base64"),
        ("abc", "signature is not valid base64"),  # bad padding
        ("sïgnature", "signature is not valid base64"),
        ("A" * 5000, "signature is too long"),
        (base64.b64encode(b"short").decode(), "invalid signature"),
        ("", "invalid signature"),
    ],
)
def test_bad_signature_text_is_refused_cleanly(
    signer: RouterSigner, signature: str, reason: str
) -> None:
    data = {**signer.sign(cost=1, endpoint="e", reqnum=1, url=URL), "signature": signature}
    error = refusal(make_auth(signer), AuthData.parse(data))
    assert (error.status, error.reason) == (401, reason)


def test_no_key_yet_is_503_until_set(signer: RouterSigner) -> None:
    authenticator = Authenticator(own_url=URL)
    assert not authenticator.has_key
    error = refusal(authenticator, signed(signer))
    assert error.status == 503
    assert "no public key yet" in error.reason
    authenticator.set_public_key(signer.public_pem())
    accept(authenticator, signed(signer))


def test_unsecured_mode_accepts_anything_and_says_so(
    signer: RouterSigner, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pyworker.auth"):
        authenticator = Authenticator(unsecured=True, own_url=URL)
    assert [r.name for r in caplog.records] == ["pyworker.auth"]
    assert "UNSECURED" in caplog.records[0].getMessage()
    bogus = AuthData(signature="?", cost=1, endpoint="e", reqnum=1, url="http://elsewhere")
    accept(authenticator, bogus)
    accept(authenticator, bogus)  # no replay check either
    assert len(caplog.records) == 1  # said once, at construction


def test_wrong_own_url_is_401_and_trailing_slash_is_tolerated(signer: RouterSigner) -> None:
    error = refusal(make_auth(signer, own_url="http://127.0.0.1:9999"), signed(signer))
    assert (error.status, error.reason) == (401, "auth_data.url is not this worker's URL")
    accept(make_auth(signer, own_url=URL + "/"), signed(signer))
    data = signer.sign(cost=1, endpoint="e", reqnum=1, url=URL + "/")
    accept(make_auth(signer, own_url=URL), AuthData.parse(data))


def test_set_public_key_refuses_non_rsa_and_garbage() -> None:
    authenticator = Authenticator()
    with pytest.raises(ValueError, match="not a PEM public key"):
        authenticator.set_public_key(b"hello")
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="must be RSA"):
        authenticator.set_public_key(ec_pem)
    assert not authenticator.has_key


# --- replay protection -----------------------------------------------------------------------


def test_exact_repeat_is_refused(signer: RouterSigner) -> None:
    authenticator = make_auth(signer)
    auth = signed(signer, reqnum=10)
    accept(authenticator, auth)
    error = refusal(authenticator, auth)
    assert error.status == 401
    assert "replayed" in error.reason


def test_2025_signatures_are_outside_the_replay_window(signer: RouterSigner) -> None:
    """A 2025 signature covers only the URL: its reqnum is the client's choice, so it neither
    meets the window nor moves it (one reqnum of 10**18 must not lock genuine requests out)."""
    authenticator = make_auth(signer)
    first = AuthData.parse(signer.sign_2025(URL, cost=5, endpoint="g", reqnum=1))
    assert authenticator.verify(first) is Signed.WORKER
    accept(authenticator, first)
    accept(authenticator, first)  # the same auth_data again: the newest router reuses it
    poison = AuthData.parse(signer.sign_2025(URL, cost=5, endpoint="g", reqnum=10**18))
    accept(authenticator, poison)
    accept(authenticator, signed(signer, reqnum=1))  # a 2024-signed request still gets in
    assert authenticator.verify(signed(signer, reqnum=2)) is Signed.REQUEST


def test_a_session_may_present_its_2024_auth_data_again(signer: RouterSigner) -> None:
    authenticator = make_auth(signer)
    auth = signed(signer, reqnum=10)
    accept(authenticator, auth)
    assert "replayed" in refusal(authenticator, auth).reason
    assert authenticator.verify(auth, reused=True) is Signed.REQUEST


def test_unsecured_checks_nothing() -> None:
    authenticator = Authenticator(unsecured=True)
    bogus = AuthData(signature="x", cost=1, endpoint="e", reqnum=1, url="http://elsewhere")
    assert authenticator.verify(bogus) is Signed.NOTHING


def test_reqnum_more_than_window_below_the_highest_is_refused(signer: RouterSigner) -> None:
    authenticator = make_auth(signer)
    accept(authenticator, signed(signer, reqnum=1000))
    error = refusal(authenticator, signed(signer, reqnum=899))
    assert error.status == 401
    assert "too old" in error.reason
    accept(authenticator, signed(signer, reqnum=900))  # exactly `window` below: still fine


def test_out_of_order_within_window_is_accepted(signer: RouterSigner) -> None:
    authenticator = make_auth(signer)
    for reqnum in [50, 10, 30, 51, 20, 49]:
        accept(authenticator, signed(signer, reqnum=reqnum))


def test_refused_requests_are_not_remembered(signer: RouterSigner) -> None:
    authenticator = make_auth(signer)
    data = signer.sign(cost=1, endpoint="e", reqnum=10_000, url=URL)
    forged = AuthData.parse({**data, "cost": 2})
    refusal(authenticator, forged)
    accept(authenticator, signed(signer, reqnum=1))  # the forged reqnum did not raise the bar


def test_no_gap_after_window_out_of_order_requests(signer: RouterSigner) -> None:
    # 100 is accepted, then 100 older requests within the window; 100 must still be remembered.
    authenticator = make_auth(signer)
    first = signed(signer, reqnum=100)
    accept(authenticator, first)
    for reqnum in range(100):
        accept(authenticator, signed(signer, reqnum=reqnum))
    assert "replayed" in refusal(authenticator, first).reason


def test_replay_guard_memory_is_bounded() -> None:
    guard = ReplayGuard(window=3)
    for reqnum in range(100):
        auth = AuthData(signature="", cost=1, endpoint="e", reqnum=reqnum, url=URL)
        assert guard.problem(auth) is None
        guard.record(auth)
    assert len(guard._recent) == len(guard._recent_set) == 7
    old = AuthData(signature="", cost=1, endpoint="e", reqnum=96, url=URL)
    assert guard.problem(old) is not None  # within the window, and remembered
    assert guard.problem(AuthData(signature="", cost=1, endpoint="e", reqnum=95, url=URL))


# --- a remembered signature; the messages for any values -------------------------------------


def test_remembered_2025_signature_still_binds_the_url_and_the_key(
    signer: RouterSigner, other_signer: RouterSigner
) -> None:
    authenticator = make_auth(signer, own_url=None)
    reused = signer.sign_2025(URL)
    for reqnum in range(1, 4):  # the first verifies with RSA, the others hit the memory
        accept(authenticator, AuthData.parse({**reused, "reqnum": reqnum}))
    other_url = {**reused, "reqnum": 10, "url": "http://10.9.8.7:4000"}
    assert refusal(authenticator, AuthData.parse(other_url)).status == 401
    authenticator.set_public_key(other_signer.public_pem())
    assert refusal(authenticator, AuthData.parse({**reused, "reqnum": 11})).status == 401


scalars = st.one_of(
    st.text(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(
    cost=scalars, endpoint=scalars, reqnum=st.integers(min_value=0, max_value=2**63), url=st.text()
)
def test_messages_match_json_dumps_indent_4_for_any_scalars(
    cost: object, endpoint: object, reqnum: int, url: str
) -> None:
    auth = AuthData(signature="", cost=cost, endpoint=endpoint, reqnum=reqnum, url=url)
    fields = {"cost": cost, "endpoint": endpoint, "reqnum": reqnum, "url": url}
    assert message_2024(auth) == json.dumps(fields, indent=4).encode("ascii")
    assert message_2025(auth) == json.dumps({"url": url}, indent=4).encode("ascii")


@pytest.mark.parametrize("message", [message_2024, message_2025])
def test_signed_messages_keep_the_url_byte_for_byte(
    message: Callable[[AuthData], bytes],
) -> None:
    # The router signs the URL as it has it; a trailing slash, case or a default port
    # "normalised" away here would make good signatures fail (or one URL's sign another's).
    urls = [
        "http://x:1/",
        "http://x:1",
        "http://x:1//",
        "HTTP://X:1",
        "http://x:80",
        "http://x",
        " http://x:1 ",
    ]
    messages = {}
    for url in urls:
        auth = AuthData(signature="s", cost=1, endpoint="e", reqnum=1, url=url)
        messages[url] = message(auth)
        assert messages[url].endswith(b'"url": %s\n}' % json.dumps(url).encode())
    assert len(set(messages.values())) == len(urls), messages
