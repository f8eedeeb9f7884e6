"""The outbox's rules as plain functions: priority, admission (capacity and suppression), coalescing, expiry and
replay decide the same for every backend, without storage."""

from __future__ import annotations

from bridge.outbox import NewEvent
from bridge.outbox.policy import (
    LOWEST_PRIORITY,
    ReplayVerdict,
    admit,
    is_expired,
    is_repeat,
    priority,
    replay_verdict,
    superseded_by,
)


def ev(alert_key: str, digest: str = "", destination: str = "d") -> NewEvent:
    return NewEvent(destination, alert_key, "alertmanager", "Critical", f"{alert_key}:{digest}", digest)


def test_priority_drains_ok_then_critical_warning_info_then_anything_else() -> None:
    """Lower ranks go first: Ok, Critical, Warning, Info, and an unknown status last."""
    ranks = [priority(status) for status in ("Ok", "Critical", "Warning", "Info", "Bogus")]
    assert ranks == sorted(ranks)
    assert ranks[-1] == LOWEST_PRIORITY
    assert len(set(ranks)) == 5


def test_a_repeat_needs_a_digest_the_same_digest_and_a_young_enough_last_acceptance() -> None:
    """Only an equal, non-empty digest accepted less than refresh_interval ago is a repeat."""
    assert is_repeat(ev("k", "d1"), ("d1", 100.0), now=399.9, refresh_interval=300)
    assert not is_repeat(ev("k", "d1"), ("d1", 100.0), now=400.0, refresh_interval=300)
    assert not is_repeat(ev("k", "d1"), ("d2", 100.0), now=101.0, refresh_interval=300)
    assert not is_repeat(ev("k", ""), ("", 100.0), now=101.0, refresh_interval=300)
    assert not is_repeat(ev("k", "d1"), None, now=101.0, refresh_interval=300)
    assert not is_repeat(ev("k", "d1"), (None, None), now=101.0, refresh_interval=300)  # only delivered so far


def test_admission_refuses_a_request_whole_and_lets_a_later_smaller_one_in() -> None:
    """Capacity counts every event of a request; a refused request does not use room a later one fits in."""
    admission = admit(
        [[ev("a"), ev("b"), ev("c")], [ev("d")]], {}, pending=2, max_pending=4, refresh_interval=0, now=10.0
    )
    assert admission.results == [None, [True]]
    assert [event.alert_key for event in admission.stored] == ["d"]
    assert admission.added == 1


def test_admission_suppresses_repeats_within_a_batch_and_remembers_the_newest_digest_per_key() -> None:
    """A repeat of an event stored earlier in the same batch is suppressed; accepted holds each key's newest digest."""
    admission = admit(
        [[ev("k", "d1"), ev("k", "d1")], [ev("k", "d2"), ev("j", "d1")]],
        {("d", "j"): ("d1", 5.0)},
        pending=0,
        max_pending=100,
        refresh_interval=300,
        now=10.0,
    )
    assert admission.results == [[True, False], [True, False]]
    assert admission.accepted == {("d", "k"): "d2"}
    assert [event.body for event in admission.stored] == ["k:d1", "k:d2"]


def test_admission_leaves_the_states_it_was_given_untouched() -> None:
    """admit() decides on a copy: a caller's snapshot of the stored states stays as it read it."""
    states = {("d", "k"): ("old", 1.0)}
    admit([[ev("k", "new")]], states, pending=0, max_pending=10, refresh_interval=300, now=10.0)
    assert states == {("d", "k"): ("old", 1.0)}


def test_expiry_needs_an_age_strictly_above_max_age_and_none_means_never() -> None:
    assert not is_expired(created_at=100.0, now=160.0, max_age=60)
    assert is_expired(created_at=100.0, now=160.1, max_age=60)
    assert not is_expired(created_at=0.0, now=1e12, max_age=None)


def test_only_a_firing_head_with_a_firing_event_right_behind_is_superseded() -> None:
    """Ok never supersedes nor is superseded; nothing behind means nothing to send instead."""
    assert superseded_by("Critical", "Warning")
    assert not superseded_by("Critical", "Ok")
    assert not superseded_by("Ok", "Critical")
    assert not superseded_by("Warning", None)


def test_replay_waits_for_an_event_on_the_wire_even_when_forced() -> None:
    """A newer head of the key under a live lease makes the dead letter wait, force or not."""
    for force in (False, True):
        verdict = replay_verdict(5, head=(9, 200.0), delivered_id=None, now=100.0, force=force)
        assert verdict is ReplayVerdict.IN_FLIGHT


def test_replay_is_superseded_only_by_a_newer_delivered_event_unless_forced() -> None:
    assert replay_verdict(5, head=None, delivered_id=9, now=100.0, force=False) is ReplayVerdict.SUPERSEDED
    assert replay_verdict(5, head=None, delivered_id=9, now=100.0, force=True) is ReplayVerdict.REPLAY
    assert replay_verdict(5, head=None, delivered_id=3, now=100.0, force=False) is ReplayVerdict.REPLAY
    # An older head, or a newer head whose lease ran out, is not on the wire.
    assert replay_verdict(5, head=(3, 200.0), delivered_id=None, now=100.0, force=False) is ReplayVerdict.REPLAY
    assert replay_verdict(5, head=(9, 100.0), delivered_id=None, now=100.0, force=False) is ReplayVerdict.REPLAY
