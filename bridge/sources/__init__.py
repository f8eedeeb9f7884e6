"""Senders: each module parses one sender's webhook into ``list[Alert]``.

A source knows its sender's format and nothing else: no limits, no Flashduty.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from bridge.contract import without_lone_surrogates


class InvalidPayload(ValueError):
    """The body can never be accepted; the message names the offending field."""


def describe_validation_error(error: ValidationError, limit: int = 5) -> str:
    """Render pydantic errors as ``alerts[2].labels.severity: Input should be a valid string``."""
    parts = []
    for item in error.errors()[:limit]:
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        parts.append(f"{path or 'body'}: {item['msg']}")
    more = error.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


class Skipped(Exception):
    """A valid body that the bridge deliberately does not forward.

    The handler answers 2xx (the sender did nothing wrong and must not retry) and counts
    ``reason``, a value from a small closed set that is safe as a metric label.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise InvalidPayload(f"{name} is not valid JSON")


#: What ``json.loads(text, parse_constant=_reject_constant)`` builds on every call (a decoder
#: and its scanner, a few µs): built once, as json itself does for plain ``json.loads``.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json(raw: bytes) -> Any:
    """Decode a JSON body (raises InvalidPayload naming what is wrong)."""
    if not raw.strip():
        raise InvalidPayload("body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # what json.loads checks before it decodes
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        body = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InvalidPayload("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, InvalidPayload):
            raise
        # int() refuses more than 4300 digits (CVE-2020-10735); it says so with a ValueError.
        raise InvalidPayload("invalid JSON: a number has more than 4300 digits") from None
    if "\\u" in text:  # only escapes can smuggle in a lone surrogate; Go's decoder makes them U+FFFD
        body = without_lone_surrogates(body)
    return body
