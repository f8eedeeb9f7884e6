"""Pacing per destination: the sliding-window rate limiter and the circuit breaker.

Both take the time as an argument, so every test drives them with explicit fake times.
"""

from __future__ import annotations

import copy

import pytest

from bridge.outbox.pacing import CircuitBreaker, CircuitState, RateLimiter

#: Flashduty's own windows; the limiter's windows are a little longer (see ``RateLimiter.windows``).
FLASHDUTY_SECOND = 1.0
FLASHDUTY_MINUTE = 60.0
#: Float slack for comparing times that were computed as sums.
EPS = 1e-9


def windows(limiter: RateLimiter) -> tuple[float, float]:
    """The lengths of the limiter's second and minute windows."""
    (second, _), (minute, _) = limiter.windows
    return second, minute


def greedy_sends(limiter: RateLimiter, seconds: float, step: float = 0.01, start: float = 1000.0) -> list[float]:
    """Simulate a sender that takes everything available at each ``step`` for ``seconds``; return the send times."""
    sent: list[float] = []
    for tick in range(round(seconds / step)):
        now = start + tick * step  # computed, not accumulated, so times stay exact to the step
        for _ in range(limiter.available(now)):
            limiter.take(now)
            sent.append(now)
    return sent


def max_in_any_window(times: list[float], length: float) -> int:
    """The largest number of ``times`` (sorted) that fall in any half-open window ``(t - length, t]``."""
    best = 0
    first = 0
    for last, now in enumerate(times):
        while times[first] <= now - length + EPS:
            first += 1
        best = max(best, last - first + 1)
    return best


# -- RateLimiter -------------------------------------------------------------------------------------


def test_windows_are_at_least_flashdutys_second_and_minute() -> None:
    """The limiter's windows are no shorter than Flashduty's 1 s and 60 s, so they can only be stricter."""
    second, minute = windows(RateLimiter(100, 1000))

    assert FLASHDUTY_SECOND < second < 2 * FLASHDUTY_SECOND
    assert FLASHDUTY_MINUTE < minute < 2 * FLASHDUTY_MINUTE


@pytest.mark.parametrize(("per_second", "per_minute"), [(10, 100), (5, 1000), (100, 1000), (1, 1), (3, 7)])
def test_greedy_sender_never_exceeds_either_window(per_second: int, per_minute: int) -> None:
    """200 s of greedy sending at 10 ms steps never puts more than the limits into any second or minute window."""
    limiter = RateLimiter(per_second, per_minute)
    second, minute = windows(limiter)

    sent = greedy_sends(limiter, 200.0)

    assert sent, "the limiter admitted nothing"
    for length, limit in ((second, per_second), (minute, per_minute)):
        assert max_in_any_window(sent, length) <= limit
        # The same property stated per send: the request ``limit`` sends later is at least one window later.
        assert all(b - a >= length - EPS for a, b in zip(sent, sent[limit:], strict=False))
    # And therefore Flashduty, counting 1 s and 60 s windows, never sees more than it allows.
    assert max_in_any_window(sent, FLASHDUTY_SECOND) <= per_second
    assert max_in_any_window(sent, FLASHDUTY_MINUTE) <= per_minute


def test_greedy_sender_uses_the_whole_allowance() -> None:
    """The limiter is not over-cautious: each window fills up to its limit, and every minute window drains a burst."""
    limiter = RateLimiter(10, 100)
    second, minute = windows(limiter)

    sent = greedy_sends(limiter, 200.0)

    assert max_in_any_window(sent, second) == 10
    assert max_in_any_window(sent, minute) == 100
    assert sent[:10] == [1000.0] * 10  # a full second's worth at once
    assert sent[10] == pytest.approx(1000.0 + second, abs=0.011)  # then the next as soon as the window slides
    assert sent[100] == pytest.approx(1000.0 + minute, abs=0.011)  # and the next minute's burst on time
    assert len(sent) >= 100 * int(200.0 // minute)


def test_next_free_is_the_first_moment_a_request_may_start() -> None:
    """Whenever nothing is available, next_free is when available() turns > 0 (to 1 µs), and 1 ms before it is 0."""
    limiter = RateLimiter(7, 60)
    checked = 0
    for tick in range(20_000):  # 200 s at 10 ms
        now = 1000.0 + tick * 0.01
        free = limiter.available(now)
        if free:
            assert limiter.next_free(now) == now
            for _ in range(free):
                limiter.take(now)
            continue
        ready = limiter.next_free(now)
        assert ready >= now
        before, at = copy.deepcopy(limiter), copy.deepcopy(limiter)  # probes must not trim the real log
        if ready - 0.001 > now:
            assert before.available(ready - 0.001) == 0
        # 1 µs of slack for float rounding; the exact boundary is pinned by a test below.
        assert at.available(ready + 1e-6) > 0
        checked += 1
    assert checked > 1000  # both windows were exercised


def test_next_free_is_exactly_a_time_when_a_request_is_available() -> None:
    """At the very instant next_free names, available() is already > 0 (no float rounding leaves it at 0)."""
    limiter = RateLimiter(1, 1)
    limiter.take(1001.1)

    ready = limiter.next_free(1001.2)

    assert limiter.available(ready) == 1


def test_next_free_accounts_for_the_window_that_fills_last() -> None:
    """With the second window empty but the minute window full, next_free waits for the minute window."""
    limiter = RateLimiter(5, 6)
    _, minute = windows(limiter)
    for now in (0.0, 0.0, 0.0, 0.0, 0.0, 2.0):
        limiter.take(now)

    assert limiter.available(10.0) == 0
    assert limiter.next_free(10.0) == pytest.approx(minute, abs=1e-5)
    assert limiter.available(minute) == 5  # the five sent at 0 left the minute window; 2.0 is still in it


def test_reserved_requests_count_against_both_windows_until_stamped() -> None:
    """A reserved request that has not left yet uses up room, so a second claim cannot overbook the window."""
    limiter = RateLimiter(3, 4)
    second, _ = windows(limiter)
    limiter.reserve()
    limiter.reserve()

    assert limiter.available(1000.0) == 1
    assert limiter.headroom(1000.0) == {"second": 1, "minute": 2}
    limiter.reserve()
    assert limiter.available(1000.0) == 0
    assert limiter.next_free(1000.0) > 1000.0

    for _ in range(3):
        limiter.stamp(1000.5)  # they leave late: the window runs from when they left
    assert limiter.available(1000.5 + second - 0.001) == 0
    assert limiter.available(1000.5 + second + 0.001) == 1  # the minute window allows only one more


def test_pause_blocks_every_request_until_the_given_time() -> None:
    """After pause(until), nothing is available before ``until`` and next_free points at it."""
    limiter = RateLimiter(10, 100)
    limiter.pause(1003.0)

    for now in (1000.0, 1001.5, 1002.999):
        assert limiter.available(now) == 0
        assert limiter.next_free(now) == 1003.0
    assert limiter.available(1003.0) == 10
    assert limiter.next_free(1003.0) == 1003.0


def test_a_shorter_pause_does_not_cut_a_longer_one_short() -> None:
    """pause() keeps the later of two pauses, so a second 429 with a short Retry-After cannot end the first pause."""
    limiter = RateLimiter(10, 100)
    limiter.pause(1010.0)
    limiter.pause(1002.0)

    assert limiter.available(1005.0) == 0
    assert limiter.next_free(1005.0) == 1010.0


def test_next_free_during_a_pause_also_respects_a_full_window() -> None:
    """When a pause ends before a full window empties, next_free is when the window empties, not the pause end."""
    limiter = RateLimiter(2, 100)
    second, _ = windows(limiter)
    limiter.take(1000.0)
    limiter.take(1000.0)
    limiter.pause(1000.5)

    ready = limiter.next_free(1000.1)

    assert limiter.available(ready) > 0
    assert ready == pytest.approx(1000.0 + second)


def test_headroom_reports_requests_left_in_each_window() -> None:
    """headroom() counts down per send and recovers as each window slides past the sends."""
    limiter = RateLimiter(3, 10)
    second, minute = windows(limiter)
    assert limiter.headroom(1000.0) == {"second": 3, "minute": 10}

    limiter.take(1000.0)
    limiter.take(1000.5)
    assert limiter.headroom(1000.5) == {"second": 1, "minute": 8}
    assert limiter.headroom(1000.0 + second + 0.001) == {"second": 2, "minute": 8}  # 1000.0 left the second window
    assert limiter.headroom(1000.5 + second + 0.001) == {"second": 3, "minute": 8}
    assert limiter.headroom(1000.0 + minute + 0.001) == {"second": 3, "minute": 9}
    assert limiter.headroom(1000.5 + minute + 0.001) == {"second": 3, "minute": 10}


# -- CircuitBreaker ----------------------------------------------------------------------------------


def state(breaker: CircuitBreaker) -> CircuitState:
    """The breaker's state, read fresh (so type checkers do not carry a narrowed state across calls)."""
    return breaker.state


def open_breaker(threshold: int = 3, cooldown: float = 10.0, max_cooldown: float = 35.0) -> CircuitBreaker:
    """A breaker opened at t=1000 by ``threshold`` failures."""
    breaker = CircuitBreaker(threshold, cooldown, max_cooldown)
    for _ in range(threshold):
        breaker.failed(1000.0)
    assert state(breaker) is CircuitState.OPEN
    return breaker


def probe(breaker: CircuitBreaker, now: float) -> None:
    """Start the half-open probe at ``now`` (it must be allowed)."""
    assert breaker.allowance(now) == 1
    breaker.started()


def test_circuit_opens_after_threshold_consecutive_failures_and_not_before() -> None:
    """N-1 failures leave the circuit closed (no limit); the N-th opens it and failed() reports that it did."""
    breaker = CircuitBreaker(3, 10.0, 60.0)

    assert [breaker.failed(1000.0), breaker.failed(1000.0)] == [False, False]
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allowance(1000.0) is None

    assert breaker.failed(1000.0) is True
    assert state(breaker) is CircuitState.OPEN
    assert breaker.allowance(1000.0) == 0


def test_a_success_resets_the_consecutive_failure_count() -> None:
    """Failures separated by a success do not add up: threshold-1, success, threshold-1 stays closed."""
    breaker = CircuitBreaker(3, 10.0, 60.0)
    breaker.failed(1000.0)
    breaker.failed(1000.0)
    breaker.succeeded()
    breaker.failed(1000.0)
    breaker.failed(1000.0)

    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allowance(1000.0) is None
    assert breaker.failed(1000.0) is True


def test_neutral_outcomes_neither_count_as_failures_nor_reset_them() -> None:
    """neutral() (e.g. a 429) leaves the failure count as it was while the circuit is closed."""
    breaker = CircuitBreaker(3, 10.0, 60.0)
    breaker.failed(1000.0)
    breaker.neutral()
    breaker.failed(1000.0)
    breaker.neutral()

    assert state(breaker) is CircuitState.CLOSED
    assert breaker.failed(1000.0) is True


def test_open_circuit_allows_nothing_until_the_cooldown_has_passed() -> None:
    """While open, allowance() is 0 right up to the cool-down's end, then the circuit is half-open."""
    breaker = open_breaker(cooldown=10.0)

    for now in (1000.0, 1005.0, 1009.999):
        assert breaker.allowance(now) == 0
        assert state(breaker) is CircuitState.OPEN
    assert breaker.allowance(1010.0) == 1
    assert state(breaker) is CircuitState.HALF_OPEN


def test_half_open_allows_exactly_one_probe_at_a_time() -> None:
    """Once the probe has started, allowance() is 0 until the probe ends, however much time passes."""
    breaker = open_breaker(cooldown=10.0)
    probe(breaker, 1010.0)

    assert breaker.allowance(1010.0) == 0
    assert breaker.allowance(2000.0) == 0
    assert state(breaker) is CircuitState.HALF_OPEN


def test_successful_probe_closes_the_circuit_and_resets_the_cooldown() -> None:
    """A probe success closes the circuit (no limit); a later opening uses the base cool-down again."""
    breaker = open_breaker(cooldown=10.0, max_cooldown=100.0)
    probe(breaker, 1010.0)
    breaker.failed(1010.0)  # probe fails: cool-down doubles to 20
    assert breaker.cooldown == 20.0
    probe(breaker, 1030.0)

    breaker.succeeded()

    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allowance(1030.0) is None
    assert breaker.failures == 0
    assert breaker.cooldown == 10.0
    for _ in range(3):
        breaker.failed(1040.0)
    assert breaker.open_until == 1050.0


def test_failed_probe_reopens_with_doubled_cooldown_capped_at_max() -> None:
    """Each failed probe reopens the circuit for twice the previous cool-down, never longer than max_cooldown."""
    breaker = open_breaker(cooldown=10.0, max_cooldown=35.0)
    now = breaker.open_until
    cooldowns = []
    for _ in range(4):
        probe(breaker, now)
        assert breaker.failed(now) is False  # a reopening is not a new opening
        assert state(breaker) is CircuitState.OPEN
        assert breaker.allowance(breaker.open_until - 0.001) == 0
        cooldowns.append(breaker.open_until - now)
        now = breaker.open_until

    assert cooldowns == [20.0, 35.0, 35.0, 35.0]


def test_neutral_outcome_of_the_probe_allows_another_probe() -> None:
    """A probe that ends neutral (e.g. 429) says nothing about health: the circuit stays half-open for a new probe."""
    breaker = open_breaker(cooldown=10.0)
    probe(breaker, 1010.0)

    breaker.neutral()

    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.allowance(1010.0) == 1
    breaker.started()
    assert breaker.allowance(1010.0) == 0


def test_resize_keeps_what_was_sent_so_a_reload_cannot_reopen_full_windows() -> None:
    limiter = RateLimiter(per_second=5, per_minute=8)
    for _ in range(5):
        limiter.take(1000.0)
    limiter.resize(per_second=3, per_minute=8)  # smaller: the five sends still fill the second
    assert limiter.available(1000.5) == 0
    limiter.resize(per_second=10, per_minute=8)  # larger: only the minute's remaining room is free
    assert limiter.available(1000.5) == 3
    assert limiter.headroom(1000.5) == {"second": 5, "minute": 3}
    second, _ = windows(limiter)
    assert limiter.available(1000.0 + second + 0.001) == 3  # the minute window still holds all five
