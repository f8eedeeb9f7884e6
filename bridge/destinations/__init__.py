"""Destinations make exactly one delivery attempt and say what happened.

They never retry and never sleep: the outbox decides what an :class:`Outcome`
means for the event (delete it, schedule it again, or park it as a dead letter).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    GIVE_UP = "give_up"


class Reason(enum.Enum):
    """Why an attempt ended as it did; a closed set, used as a metric label."""

    DELIVERED = "delivered"
    NETWORK = "network"  # connection refused / reset, DNS, TLS
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"  # 5xx or InternalError
    RATE_LIMITED = "rate_limited"  # 429 or RequestTooFrequently
    REJECTED = "rejected"  # InvalidParameter and other permanent 4xx
    BAD_KEY = "bad_key"  # the integration key itself is refused: code INVALID_INTEGRATION_KEY
    AUTH = "auth"  # Unauthorized, AccessDenied
    BILLING = "billing"  # NoLicense, ResourceNotFound
    BAD_RESPONSE = "bad_response"  # a 2xx that is not the documented envelope


#: The bridge's code for "Flashduty does not know this integration key". Flashduty answers a
#: wrong key with HTTP 400 ``InvalidParameter`` ("integration_key is not a valid one"), the code
#: it also uses for a malformed event; the bridge gives the key its own code so that dead
#: letters, metrics and ``deadletter replay --code`` can tell a configuration error (fix the
#: key, replay) from an event Flashduty will never take.
INVALID_INTEGRATION_KEY = "InvalidIntegrationKey"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt. ``code`` is Flashduty's error code (or a bridge code)."""

    verdict: Verdict
    reason: Reason
    code: str = "none"
    message: str = ""
    request_id: str | None = None
    status: int | None = None
    retry_after: float | None = None

    def __repr__(self) -> str:
        return (
            f"Outcome({self.verdict.value}, {self.reason.value}, code={self.code}, status={self.status},"
            f" request_id={self.request_id})"
        )


class Destination(Protocol):
    """Where events go. ``name`` labels metrics and is stored with each event."""

    name: str

    async def send(self, body: str) -> Outcome:
        """Make one attempt to deliver ``body`` (the event's JSON)."""
