"""Inbound authentication: basic, bearer and Grafana's HMAC signature, with precise reasons."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import Headers

from bridge.auth import REASONS, AuthConfig, BasicAuth, BearerAuth, HmacAuth, NoAuth, Unauthorized
from tests.conftest import FIXTURES
from tests.support.clock import FakeClock

SECRET = "s3cr3t-SIGNING-key-7f3a"
BODY = (FIXTURES / "grafana-firing.json").read_bytes()
NOW = 1_758_042_679


def signature(body: bytes, secret: str = SECRET, timestamp: str | None = None) -> str:
    """Grafana's signature, computed here independently of bridge.auth."""
    message = body if timestamp is None else f"{timestamp}:".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def reason_of(config: Any, headers: dict[str, str], body: bytes = BODY, clock: FakeClock | None = None) -> str:
    """Verify and return the Unauthorized reason (fails the test if the request passes)."""
    with pytest.raises(Unauthorized) as info:
        config.verify(headers, body, clock=clock or FakeClock(NOW))
    assert info.value.reason in REASONS
    return info.value.reason


def test_none_accepts_any_request() -> None:
    """Method none lets a request without any header through."""
    NoAuth().verify({}, b"anything")


# --- basic -----------------------------------------------------------------------------------

BASIC = BasicAuth(username="grafana", password="pa:ss wörd")


def test_basic_accepts_the_configured_pair_including_colons_and_utf8() -> None:
    """The password may contain ':' and non-ASCII; only the first ':' separates the username."""
    BASIC.verify({"Authorization": basic("grafana", "pa:ss wörd")}, BODY)


def test_basic_header_name_and_scheme_are_case_insensitive() -> None:
    """ASGI servers give lower-case header names; some clients send 'basic'."""
    BASIC.verify({"authorization": "basic " + basic("grafana", "pa:ss wörd").split()[1]}, BODY)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing credentials"),
        ({"Authorization": basic("grafana", "wrong")}, "bad credentials"),
        ({"Authorization": basic("other", "pa:ss wörd")}, "bad credentials"),
        ({"Authorization": basic("grafana", "pa:ss wörd ")}, "bad credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"grafanapass").decode()}, "bad credentials"),
        ({"Authorization": "Basic not*base64"}, "bad credentials"),
        ({"Authorization": "Bearer pa:ss wörd"}, "bad credentials"),
        ({"Authorization": ""}, "bad credentials"),
    ],
)
def test_basic_refuses_with_a_precise_reason(headers: dict[str, str], reason: str) -> None:
    """Missing, wrong, malformed or other-scheme credentials are each named."""
    assert reason_of(BASIC, headers) == reason


# --- bearer ----------------------------------------------------------------------------------

BEARER = BearerAuth(token="tok-123-SECRET")


def test_bearer_accepts_the_token_with_any_case_scheme_and_extra_spaces() -> None:
    """'bearer  tok' with stray whitespace is the same credential."""
    BEARER.verify({"AUTHORIZATION": "bearer   tok-123-SECRET  "}, BODY)


def test_bearer_custom_scheme_from_grafana_authorization_scheme() -> None:
    """Grafana's authorization_scheme can be anything; the configured scheme is required."""
    config = BearerAuth(token="tok-123-SECRET", scheme="Token")
    config.verify({"Authorization": "Token tok-123-SECRET"}, BODY)
    assert reason_of(config, {"Authorization": "Bearer tok-123-SECRET"}) == "bad credentials"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing credentials"),
        ({"Authorization": "Bearer tok-123-SECRE"}, "bad credentials"),
        ({"Authorization": "Bearer tok-123-SECRET-more"}, "bad credentials"),
        ({"Authorization": "tok-123-SECRET"}, "bad credentials"),
        ({"Authorization": basic("x", "tok-123-SECRET")}, "bad credentials"),
    ],
)
def test_bearer_refuses_with_a_precise_reason(headers: dict[str, str], reason: str) -> None:
    """A missing header and a wrong token or scheme are told apart."""
    assert reason_of(BEARER, headers) == reason


# --- hmac ------------------------------------------------------------------------------------

HMAC = HmacAuth(secret=SECRET)
HMAC_TS = HmacAuth(secret=SECRET, timestamp_header="X-Grafana-Alerting-Signature-Timestamp", max_skew=300)


def test_hmac_accepts_the_signature_of_the_raw_body() -> None:
    """The lower-case hex HMAC-SHA256 of the exact bytes, keyed with the secret, passes."""
    HMAC.verify({"X-Grafana-Alerting-Signature": signature(BODY)}, BODY)


def test_hmac_header_lookup_is_case_insensitive_in_dicts_and_starlette_headers() -> None:
    """Lower-case names from ASGI and Starlette's Headers both work."""
    HMAC.verify({"x-grafana-alerting-signature": signature(BODY)}, BODY)
    HMAC.verify(Headers(raw=[(b"x-grafana-alerting-signature", signature(BODY).encode())]), BODY)


def test_hmac_accepts_upper_case_hex_and_a_custom_header() -> None:
    """Hex case does not matter; the header name is configurable."""
    config = HmacAuth(secret=SECRET, header="X-Signature")
    config.verify({"X-Signature": signature(BODY).upper()}, BODY)
    assert reason_of(config, {"X-Grafana-Alerting-Signature": signature(BODY)}) == "missing signature"


def test_hmac_refuses_a_tampered_body() -> None:
    """Changing one byte of the body after signing breaks the signature."""
    tampered = BODY.replace(b'"firing"', b'"resolvd"', 1)
    assert tampered != BODY
    assert reason_of(HMAC, {"X-Grafana-Alerting-Signature": signature(BODY)}, tampered) == "bad signature"


def test_hmac_refuses_a_reserialised_body() -> None:
    """The signature covers the raw bytes, not the JSON value: re-indenting the body breaks it."""
    compact = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert reason_of(HMAC, {"X-Grafana-Alerting-Signature": signature(BODY)}, compact) == "bad signature"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing signature"),
        ({"X-Grafana-Alerting-Signature": signature(BODY, secret="other-secret")}, "bad signature"),
        ({"X-Grafana-Alerting-Signature": "sha256=" + signature(BODY)}, "bad signature"),
        ({"X-Grafana-Alerting-Signature": signature(BODY)[:-1]}, "bad signature"),
        ({"X-Grafana-Alerting-Signature": "z" * 64}, "bad signature"),
        ({"X-Grafana-Alerting-Signature": ""}, "bad signature"),
    ],
)
def test_hmac_refuses_with_a_precise_reason(headers: dict[str, str], reason: str) -> None:
    """Missing, wrong-secret, prefixed, truncated and non-hex signatures are refused."""
    assert reason_of(HMAC, headers) == reason


def ts_headers(timestamp: str, body: bytes = BODY, signed: str | None = None) -> dict[str, str]:
    return {
        "X-Grafana-Alerting-Signature": signature(body, timestamp=timestamp if signed is None else signed),
        "X-Grafana-Alerting-Signature-Timestamp": timestamp,
    }


def test_hmac_with_timestamp_accepts_a_fresh_signed_timestamp() -> None:
    """'<seconds>:' + body signed, timestamp within the window: accepted, at both edges."""
    for offset in (0, -300, 300):
        HMAC_TS.verify(ts_headers(str(NOW + offset)), BODY, clock=FakeClock(NOW))


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**9])
def test_hmac_with_timestamp_refuses_old_and_future_timestamps(offset: int) -> None:
    """Beyond max_skew in either direction is a stale timestamp, even with a valid signature."""
    assert reason_of(HMAC_TS, ts_headers(str(NOW + offset)), clock=FakeClock(NOW)) == "stale timestamp"


def test_replay_is_refused_once_the_window_has_passed() -> None:
    """The same captured request passes now and is refused when replayed six minutes later."""
    clock = FakeClock(NOW)
    headers = ts_headers(str(NOW))
    HMAC_TS.verify(headers, BODY, clock=clock)
    clock.advance(360)
    assert reason_of(HMAC_TS, headers, clock=clock) == "stale timestamp"


def test_hmac_timestamp_is_part_of_the_signed_message() -> None:
    """Moving the timestamp forward without re-signing fails; so does a body-only signature."""
    assert reason_of(HMAC_TS, ts_headers(str(NOW), signed=str(NOW - 1000))) == "bad signature"
    body_only = {"X-Grafana-Alerting-Signature": signature(BODY), "X-Grafana-Alerting-Signature-Timestamp": str(NOW)}
    assert reason_of(HMAC_TS, body_only) == "bad signature"


def test_forged_stale_request_is_reported_as_a_bad_signature() -> None:
    """A forgery is always 'bad signature'; 'stale timestamp' only describes genuine requests."""
    headers = ts_headers(str(NOW - 10_000), signed="0")
    assert reason_of(HMAC_TS, headers) == "bad signature"


@pytest.mark.parametrize("value", ["abc", "1.5", "-5", "", "  ", "1e9", "0x10", "9" * 30, "１２３"])
def test_hmac_refuses_non_numeric_timestamps(value: str) -> None:
    """Anything but plain decimal Unix seconds is a bad timestamp (checked before any arithmetic)."""
    headers = ts_headers(value)
    assert reason_of(HMAC_TS, headers) == "bad timestamp"


def test_hmac_requires_the_configured_timestamp_header() -> None:
    """Without the timestamp header a timestamped config refuses the request."""
    headers = {"X-Grafana-Alerting-Signature": signature(BODY)}
    assert reason_of(HMAC_TS, headers) == "missing timestamp"


# --- secrets never leak ----------------------------------------------------------------------


def test_repr_str_and_json_of_configs_never_show_secrets() -> None:
    """Secrets are SecretStr: masked in repr, str and JSON dumps."""
    configs: list[tuple[Any, str]] = [(BASIC, "pa:ss wörd"), (BEARER, "tok-123-SECRET"), (HMAC_TS, SECRET)]
    for config, secret in configs:
        for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
            assert secret not in text
            assert "**" in text


def test_refusal_messages_never_contain_the_secret_or_the_presented_credential() -> None:
    """Every refusal message is free of the configured secret and of what the client sent."""
    presented = "presented-CREDENTIAL-42"
    cases: list[tuple[Any, dict[str, str], str]] = [
        (BASIC, {"Authorization": basic("grafana", presented)}, "pa:ss wörd"),
        (BASIC, {"Authorization": "Basic " + presented}, "pa:ss wörd"),
        (BEARER, {"Authorization": "Bearer " + presented}, "tok-123-SECRET"),
        (BEARER, {"Authorization": presented + " x"}, "tok-123-SECRET"),
        (HMAC, {"X-Grafana-Alerting-Signature": presented}, SECRET),
        (HMAC_TS, {**ts_headers(str(NOW)), "X-Grafana-Alerting-Signature-Timestamp": presented}, SECRET),
    ]
    for config, headers, secret in cases:
        with pytest.raises(Unauthorized) as info:
            config.verify(headers, BODY, clock=FakeClock(NOW))
        message = f"{info.value} {info.value!r} {info.value.detail}"
        assert secret not in message
        assert presented not in message
        assert base64.b64encode(f"grafana:{presented}".encode()).decode() not in message


# --- config ----------------------------------------------------------------------------------


def test_auth_config_is_chosen_by_method_and_rejects_unknown_keys() -> None:
    """The union parses each method from YAML-like dicts; typos are errors, not ignored."""
    adapter: TypeAdapter[Any] = TypeAdapter(AuthConfig)
    assert isinstance(adapter.validate_python({"method": "hmac", "secret": "x"}), HmacAuth)
    assert isinstance(adapter.validate_python({"method": "none"}), NoAuth)
    assert adapter.validate_python({"method": "bearer", "token": "t"}).scheme == "Bearer"
    for bad in (
        {"method": "hmac", "secret": "x", "timestamp_heder": "X-Ts"},
        {"method": "hmac", "secret": ""},
        {"method": "basic", "username": "u"},
        {"method": "hmac", "secret": "x", "max_skew": 0},
        {"method": "digest"},
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


def test_configs_are_frozen() -> None:
    """A verified config cannot be changed behind the verifier's back."""
    with pytest.raises(ValidationError):
        HMAC.max_skew = 10**9  # type: ignore[misc]


def test_expected_signature_matches_an_independent_computation() -> None:
    """The helper Grafana-compatible senders (tests, emulators) can use gives the same digest."""
    assert HMAC.expected_signature(BODY) == signature(BODY)
    assert HMAC.expected_signature(BODY, "123") == signature(BODY, timestamp="123")
