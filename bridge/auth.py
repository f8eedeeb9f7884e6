"""Inbound authentication of webhook requests, checked on the raw body before any parsing.

One frozen config model per method; each has ``verify(headers, raw_body)`` which returns
``None`` or raises :class:`Unauthorized` with a ``reason`` from :data:`REASONS`:

* ``none``: every request passes.
* ``basic``: ``Authorization: Basic base64(username:password)``.
* ``bearer``: ``Authorization: <scheme> <token>``, scheme ``Bearer`` by default (Grafana's
  ``authorization_scheme`` / ``authorization_credentials``; Alertmanager's ``authorization``).
* ``hmac``: Grafana's webhook signature (``grafana/alerting`` ``http/hmac.go``, 12.x):
  lower-case hex HMAC-SHA256 of the body, keyed with the secret's UTF-8 bytes, in
  ``X-Grafana-Alerting-Signature``. With a timestamp header configured, Grafana sends the Unix
  seconds in it and signs ``"<seconds>:" + body``; requests outside ``max_skew`` of the clock,
  either way, are refused so a captured request cannot be replayed later.

Every comparison of a secret is constant-time (:func:`hmac.compare_digest` on bytes). No
message, ``repr`` or ``str`` contains the configured secret or what the client presented.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Clock = Callable[[], float]

#: Every ``Unauthorized.reason``: a closed set, safe as a metric label value.
REASONS = (
    "missing credentials",
    "bad credentials",
    "missing signature",
    "bad signature",
    "missing timestamp",
    "bad timestamp",
    "stale timestamp",
)

_HEX = re.compile(r"[0-9a-f]{64}")
# Grafana sends strconv.FormatInt(unix seconds): plain decimal digits. 1-19 digits also
# keeps int() far from Python's digit limit on hostile input.
_SECONDS = re.compile(r"[0-9]{1,19}")  # not \d: that matches any Unicode digit


class Unauthorized(Exception):
    """The request is not from the configured sender; ``reason`` is one of :data:`REASONS`.

    ``detail`` says which header or check failed, for logs; it never holds a secret or the
    credential the client presented.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, looked up case-insensitively (HTTP header names are)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, found in headers.items():
        if key.lower() == wanted:
            return found
    return None


def _same(presented: bytes, expected: bytes) -> bool:
    # Constant-time for equal lengths; a length mismatch reveals only the length.
    return hmac.compare_digest(presented, expected)


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoAuth(_Config):
    """No authentication: for a bridge reachable only by its senders."""

    method: Literal["none"] = "none"

    def verify(self, headers: Mapping[str, str], raw_body: bytes, *, clock: Clock = time.time) -> None:
        """Accept every request."""


class BasicAuth(_Config):
    """HTTP basic authentication with one username and password."""

    method: Literal["basic"] = "basic"
    username: str = Field(min_length=1)
    password: SecretStr = Field(min_length=1)

    def verify(self, headers: Mapping[str, str], raw_body: bytes, *, clock: Clock = time.time) -> None:
        """Raise :class:`Unauthorized` unless the request carries this username and password."""
        value = header_value(headers, "Authorization")
        if value is None:
            raise Unauthorized("missing credentials", "no Authorization header")
        scheme, _, encoded = value.strip().partition(" ")
        if scheme.lower() != "basic":
            raise Unauthorized("bad credentials", "Authorization scheme is not Basic")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise Unauthorized("bad credentials", "Authorization Basic value is not base64") from None
        user, colon, password = decoded.partition(b":")
        # Both comparisons always run, so timing does not tell which part was wrong.
        user_ok = _same(user, self.username.encode())
        password_ok = _same(password, self.password.get_secret_value().encode())
        if not (colon and user_ok and password_ok):
            raise Unauthorized("bad credentials", "wrong username or password")


class BearerAuth(_Config):
    """``Authorization: <scheme> <token>`` with a fixed token (scheme compared case-insensitively)."""

    method: Literal["bearer"] = "bearer"
    token: SecretStr = Field(min_length=1)
    scheme: str = Field(default="Bearer", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

    def verify(self, headers: Mapping[str, str], raw_body: bytes, *, clock: Clock = time.time) -> None:
        """Raise :class:`Unauthorized` unless the request carries this token."""
        value = header_value(headers, "Authorization")
        if value is None:
            raise Unauthorized("missing credentials", "no Authorization header")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != self.scheme.lower():
            raise Unauthorized("bad credentials", f"Authorization scheme is not {self.scheme}")
        if not _same(token.strip().encode(), self.token.get_secret_value().encode()):
            raise Unauthorized("bad credentials", "wrong token")


class HmacAuth(_Config):
    """Grafana's HMAC-SHA256 request signature, optionally over a timestamp as well."""

    method: Literal["hmac"] = "hmac"
    secret: SecretStr = Field(min_length=1)
    header: str = Field(default="X-Grafana-Alerting-Signature", min_length=1)
    #: Grafana's ``timestampHeader``; when set, the timestamp is required and signed.
    timestamp_header: str | None = Field(default=None, min_length=1)
    #: How far the timestamp may be from the bridge's clock, in seconds, past or future.
    max_skew: float = Field(default=300.0, gt=0)

    def expected_signature(self, raw_body: bytes, timestamp: str | None = None) -> str:
        """The hex signature Grafana sends for ``raw_body`` (and ``timestamp``, when used)."""
        message = raw_body if timestamp is None else timestamp.encode() + b":" + raw_body
        return hmac.new(self.secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()

    def verify(self, headers: Mapping[str, str], raw_body: bytes, *, clock: Clock = time.time) -> None:
        """Raise :class:`Unauthorized` unless ``raw_body`` carries a valid, fresh signature.

        The signature is checked before the timestamp's age, so "stale timestamp" is only
        said of genuine requests (a replay, or a sender whose clock is off) and a forgery is
        always "bad signature".
        """
        presented = header_value(headers, self.header)
        if presented is None:
            raise Unauthorized("missing signature", f"no {self.header} header")
        timestamp: str | None = None
        if self.timestamp_header is not None:
            timestamp = header_value(headers, self.timestamp_header)
            if timestamp is None:
                raise Unauthorized("missing timestamp", f"no {self.timestamp_header} header")
            timestamp = timestamp.strip()
            if not _SECONDS.fullmatch(timestamp):
                raise Unauthorized("bad timestamp", f"{self.timestamp_header} is not Unix seconds")
        signature = presented.strip().lower()
        if not _HEX.fullmatch(signature):
            raise Unauthorized("bad signature", f"{self.header} is not a hex SHA-256 digest")
        if not _same(signature.encode(), self.expected_signature(raw_body, timestamp).encode()):
            raise Unauthorized("bad signature", f"{self.header} does not match the body")
        if timestamp is not None:
            skew = clock() - int(timestamp)
            if abs(skew) > self.max_skew:
                direction = "old" if skew > 0 else "in the future"
                detail = f"{self.timestamp_header} is {abs(skew):.0f}s {direction} (max {self.max_skew:g}s)"
                raise Unauthorized("stale timestamp", detail)


#: A source's ``auth`` setting: one of the models above, chosen by ``method``.
AuthConfig = Annotated[NoAuth | BasicAuth | BearerAuth | HmacAuth, Field(discriminator="method")]
