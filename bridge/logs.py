"""Logging setup: one plain line per record, with secrets scrubbed from every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from bridge.destinations.flashduty import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Replace each secret in a record's final message (and traceback) with ``***``.

    Defence in depth: our own code never logs the key, but a library could (httpx logs
    request URLs at INFO, and the integration key is in the query string).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        for secret in self.secrets:
            message = redact(message, secret)
        record.msg, record.args = message, None
        return True


_redactor = RedactingFilter(())


def add_secrets(secrets: Iterable[str]) -> None:
    """Scrub these too from now on (keys read at reload, keys that arrived in a URL)."""
    _redactor.secrets.extend(secret for secret in secrets if secret and secret not in _redactor.secrets)


def remove_secrets(secrets: Iterable[str]) -> None:
    """Stop scrubbing these (a retired passthrough key), so the list stays as small as the keys in use."""
    gone = set(secrets)
    _redactor.secrets[:] = [secret for secret in _redactor.secrets if secret not in gone]


def setup(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    add_secrets(secrets)
    handler.addFilter(_redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL (with the integration key) at INFO; we log outcomes ourselves.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
