"""A clock that only moves when a test moves it (inject it wherever code takes ``clock=``)."""

from __future__ import annotations


class FakeClock:
    """Callable like ``time.time``; ``now`` is set or advanced by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
