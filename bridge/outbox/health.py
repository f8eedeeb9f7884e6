"""Whether the outbox's storage works, as the outbox and its callers see it.

Every backend owns one :class:`StorageHealth`. It records each storage failure
(``failed``: counted through the listener, the first one of a streak logged), and
holds the current problem until the delivery loop proves the storage works again
(a successful ``probe`` and a whole pass of claims and acks, then ``recovered``).
Only that one place clears it, so readiness does not flap while, say, writes fail
and reads still work.

``OutboxFull`` is not a storage failure: a full outbox works, it is just full.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("bridge.outbox")

#: What failed, for the ``operation`` label of the storage-error counter (a closed set).
OPERATIONS = ("open", "put", "claim", "record", "read", "admin", "checkpoint", "probe")


class StorageHealth:
    """The current storage problem (None: storage works), and a listener for every failure."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.problem: str | None = None
        self.since: float | None = None
        #: Failures so far: a proof of recovery counts only if no failure happened while it ran.
        self.failures = 0
        #: Called with the operation for every failure (the app counts them in a metric).
        self.listener: Callable[[str], None] | None = None

    def failed(self, operation: str, error: BaseException | str) -> None:
        """A storage operation failed; the bridge is not ready until ``recovered``."""
        reason = f"{operation} failed: {error}"
        self.failures += 1
        if self.problem is None:
            self.since = self._clock()
            log.error("storage error (%s): %s; not ready until it works again", operation, error)
        self.problem = reason
        if self.listener is not None:
            self.listener(operation)

    def noted(self, operation: str, error: BaseException | str) -> None:
        """A failure that does not stop the outbox from working (e.g. a WAL checkpoint): counted and logged."""
        log.warning("storage error (%s): %s", operation, error)
        if self.listener is not None:
            self.listener(operation)

    def recovered(self, failures_before: int) -> None:
        """Storage works again: the caller proved it with work that began when ``failures`` was ``failures_before``.

        A failure recorded meanwhile (a put failing during that work) keeps the problem.
        """
        if self.problem is None or self.failures != failures_before:
            return
        since = self.since if self.since is not None else self._clock()
        log.warning("storage works again after %.0fs (last problem: %s)", self._clock() - since, self.problem)
        self.problem = None
        self.since = None
