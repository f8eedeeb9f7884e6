"""Wrong admin tokens per client address: past the limit the address waits, others do not, memory is capped."""

from __future__ import annotations

from collections.abc import Callable

from bridge.lockout import Lockout
from tests.conftest import Bridge
from tests.support.clock import FakeClock


def test_an_address_waits_after_ten_failures_until_the_oldest_leaves_the_minute() -> None:
    clock = FakeClock()
    lockout = Lockout(clock)
    for _ in range(9):
        lockout.failed("10.0.0.1")
        clock.advance(1)
    assert lockout.wait("10.0.0.1") == 0  # nine: still checked
    lockout.failed("10.0.0.1")
    assert lockout.wait("10.0.0.1") == 60 - 9  # the first failure, 9 s ago, leaves the window in 51 s
    clock.advance(51)
    assert lockout.wait("10.0.0.1") == 0


def test_other_addresses_are_not_held_back() -> None:
    lockout = Lockout(FakeClock())
    for _ in range(10):
        lockout.failed("10.0.0.1")
    assert lockout.wait("10.0.0.1") > 0
    assert lockout.wait("10.0.0.2") == 0


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = FakeClock()
    lockout = Lockout(clock)
    for _ in range(10):
        lockout.failed("10.0.0.1")
        clock.advance(7)  # ten failures over 70 s: never ten inside one minute
    assert lockout.wait("10.0.0.1") == 0
    clock.advance(60)
    assert lockout.wait("10.0.0.1") == 0 and len(lockout) == 0


def test_memory_is_capped_by_forgetting_the_least_recently_failing_address() -> None:
    lockout = Lockout(FakeClock(), max_addresses=3)
    for address in ("a", "b", "c"):
        for _ in range(10):
            lockout.failed(address)
    lockout.failed("d")
    assert len(lockout) == 3
    assert lockout.wait("a") == 0 and lockout.wait("b") > 0  # a, the least recent to fail, is forgotten
    lockout.failed("b")  # b fails again: now the most recent
    lockout.failed("e")
    assert len(lockout) == 3
    assert lockout.wait("c") == 0 and lockout.wait("b") > 0


def test_the_real_server_locks_out_the_guessing_address(make_bridge: Callable[..., Bridge]) -> None:
    """Through the real process (the peer address comes from its sockets): ten wrong tokens, then 429."""
    bridge = make_bridge(None)
    for n in range(10):
        assert bridge.admin("GET", "/dead-letters", token=f"guess-{n}").status_code == 401
    locked = bridge.admin("GET", "/dead-letters")  # the right token, unchecked
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) in range(50, 61), locked.headers
    assert "127.0.0.1" in locked.json()["error"]["message"]
    assert bridge.metric("flashduty_bridge_auth_failures_total", source="admin", reason="bad credentials") == 10
