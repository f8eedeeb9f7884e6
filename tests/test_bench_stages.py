"""bench/stages.py: each child runs its stage on this checkout and reports CPU per alert (numbers are not judged)."""

from __future__ import annotations

import pytest

from bench._proc import REPO, BridgeSource
from bench.stages import measure


@pytest.mark.parametrize("size", [1, 10])
def test_the_durable_and_the_bridge_child_each_prepare_and_store_every_alert(size: int) -> None:
    # The bridge child asserts that outbox.put stored every event; the durable child commits every row.
    for source in (None, BridgeSource("bridge", REPO)):
        found = measure(source, size, 20)
        assert set(found) == {"prepare", "store"}
        assert all(value > 0 for value in found.values()), found
