"""``flashduty-bridge serve`` on storage that fails, through the real process: a disk that fills up while it runs.

The full disk is real: the outbox directory is a small tmpfs mounted in a private mount namespace
(``unshare``, as root), and the test fills it through ``/proc/<pid>/root``, as another process on the
same volume would. Without root and unshare(1) the test is skipped, unless ``BRIDGE_REQUIRE_UNSHARE=1``
(CI) makes that a failure.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TEST_KEY, Bridge, wait_for
from tests.support.procs import LOOPBACK, Proc, free_port, python_module
from tests.test_app import alert, webhook

REQUIRE_UNSHARE = "BRIDGE_REQUIRE_UNSHARE"
#: Room for the outbox of this test with some to spare, small enough to fill in an instant.
TMPFS_SIZE = "8m"


def can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.fixture
def needs_tmpfs() -> None:
    if not can_mount_tmpfs():
        message = "needs root and unshare(1) to mount a small tmpfs in a private mount namespace"
        if os.environ.get(REQUIRE_UNSHARE) == "1":
            pytest.fail(f"{message}; {REQUIRE_UNSHARE}=1 requires it")
        pytest.skip(message)


@pytest.fixture
def bridge_on_tmpfs(tmp_path: Path, needs_tmpfs: None) -> Iterator[tuple[Bridge, Path]]:
    """A bridge whose storage.path is a fresh 8 MiB tmpfs, delivering to a port where nothing listens.

    Yields the bridge and its outbox directory as seen from outside its mount namespace.
    """
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    config = {
        "storage": {"path": str(data)},
        # Nothing listens there: every event stays pending, retried, and the outbox keeps being written.
        "flashduty": {"url": f"http://{LOOPBACK}:{free_port()}/event/push/alert/standard", "integration_key": TEST_KEY},
        "delivery": {"backoff_initial": "50ms", "backoff_max": "200ms", "workers": 4},
        "log_level": "info",
    }
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(yaml.safe_dump(config))
    bridge = Bridge(config_path, port, tmp_path / "bridge.log")
    mount = f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {shlex.quote(str(data))}"
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", f'{mount}; exec "$@"', "sh"]
    argv = python_module("bridge", "serve", "--config", str(config_path), "--listen", f"{LOOPBACK}:{port}")
    bridge.proc = Proc([*wrapper, *argv], bridge.log_path, env={"PYTHONUNBUFFERED": "1"})  # exec: the bridge's pid
    try:
        bridge.proc.wait_http(f"{bridge.url}/-/ready")
        yield bridge, Path(f"/proc/{bridge.proc.pid}/root") / data.relative_to("/")
    finally:
        bridge.stop()


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its filesystem is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as file:
        try:
            while True:
                file.write(chunk)
                file.flush()
        except OSError:
            pass
    return filler


def post_one(bridge: Bridge, name: str) -> httpx.Response:
    return bridge.post("/alertmanager", webhook(alert({"alertname": name, "instance": "disk"})))


def test_a_full_disk_makes_the_bridge_not_ready_with_the_reason_keeps_metrics_fresh_and_recovers(
    bridge_on_tmpfs: tuple[Bridge, Path],
) -> None:
    """Disk full: intake answers 503, /-/ready 503 says why, storage errors are counted, pending and oldest age keep
    refreshing; once space is freed the bridge is ready again and takes alerts, without a restart."""
    bridge, outbox_dir = bridge_on_tmpfs
    alerts = [alert({"alertname": "Backlog", "instance": f"node-{i}"}) for i in range(50)]
    assert bridge.post("/alertmanager", webhook(*alerts)).status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 50, what="50 pending")

    filler = fill(outbox_dir)
    refused = wait_for(lambda: (r := post_one(bridge, "WhileFull")).status_code == 503 and r, what="a 503")
    assert "database or disk is full" in refused.json()["error"]["message"]

    ready = httpx.get(f"{bridge.url}/-/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert ready.json()["reason"].startswith("storage: ")
    assert "database or disk is full" in ready.json()["reason"]
    assert bridge.metric("flashduty_bridge_storage_errors_total", operation="put") >= 1
    # The gauges keep telling the truth while writes fail: still 50 waiting, and getting older.
    age = bridge.metric("flashduty_bridge_outbox_oldest_pending_age_seconds")
    wait_for(
        lambda: bridge.metric("flashduty_bridge_outbox_oldest_pending_age_seconds") >= age + 2,
        what="the oldest age to keep moving",
    )
    assert bridge.metric("flashduty_bridge_outbox_pending") == 50
    assert httpx.get(f"{bridge.url}/-/ready").status_code == 503  # still failing: no flapping back

    filler.unlink()
    wait_for(lambda: httpx.get(f"{bridge.url}/-/ready").status_code == 200, what="ready again")
    assert post_one(bridge, "AfterFull").status_code == 200
    wait_for(lambda: bridge.metric("flashduty_bridge_outbox_pending") == 51, what="51 pending")
    log = bridge.log()
    assert "not ready until it works again" in log and "storage works again" in log
    assert "Traceback" not in log
