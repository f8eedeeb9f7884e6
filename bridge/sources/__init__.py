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
