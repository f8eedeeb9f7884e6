"""Failed admin-token attempts, per client address: past a limit, the address waits.

The admin API and the console's login take the admin token; nothing else slows down
someone guessing it. :class:`Lockout` remembers, per client address, when its recent
failures happened: with :data:`MAX_FAILURES` inside :data:`WINDOW_SECONDS`, further
attempts from that address are refused (429 ``TooManyAttempts`` with ``Retry-After``)
*without checking the token*, until the oldest failure leaves the window. Checking it
anyway would let a guesser ignore the refusals and still learn when a guess is right.

Only operators' endpoints use it. The alert path never does: a sender with a wrong
secret behind a shared address (an ingress) must not make others' alerts wait.

Memory is bounded: at most :data:`MAX_ADDRESSES` addresses are remembered, the least
recently failing one forgotten first, and each keeps at most :data:`MAX_FAILURES` times.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 4096


class Lockout:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, address: str) -> float:
        """Seconds ``address`` must wait before its next attempt is checked (0: check it now)."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        if len(failures) < self.max_failures:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, address: str) -> None:
        """Record a wrong token from ``address``."""
        failures = self._failures.pop(address, None)
        if failures is None:
            failures = deque(maxlen=self.max_failures)
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
        failures.append(self._clock())
        self._failures[address] = failures  # most recently failing last

    def __len__(self) -> int:
        return len(self._failures)
