"""Senders: each module parses one sender's webhook into ``list[Alert]``.

A source knows its sender's format and nothing else: no limits, no Flashduty.
"""

from __future__ import annotations

from pydantic import ValidationError


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
