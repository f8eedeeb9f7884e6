"""``flashduty-bridge serve`` on storage it must not or cannot use, through the real process.

At start: a damaged, emptied, deleted or foreign outbox, one that cannot be read, or one another bridge
holds is refused before anything listens, with one line on stderr naming the file and what to do, and an
exit code of its own (65 unusable, 74 unavailable, 75 in use). While running: a disk that fills up.

The full disk is real: the outbox directory is a small tmpfs mounted in a private mount namespace
(``unshare``, as root), and the test fills it through ``/proc/<pid>/root``, as another process on the
same volume would. Without root and unshare(1) the test is skipped, unless ``BRIDGE_REQUIRE_UNSHARE=1``
(CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bridge.cli import EXIT_OUTBOX_IN_USE, EXIT_OUTBOX_UNAVAILABLE, EXIT_OUTBOX_UNUSABLE
from tests.conftest import TEST_KEY, Bridge, wait_for, write_config
from tests.support.damage import DAMAGE, fill
from tests.support.procs import LOOPBACK, Proc, free_port, python_module
from tests.test_app import alert, webhook

REQUIRE_UNSHARE = "BRIDGE_REQUIRE_UNSHARE"
#: Room for the outbox of this test with some to spare, small enough to fill in an instant.
TMPFS_SIZE = "8m"


# -- refused at start ---------------------------------------------------------------------------------


def serve_once(tmp_path: Path, data: Path) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` on ``data`` and wait for it to exit (it must not start)."""
    config = write_config(tmp_path / "refused.yaml", {"storage": {"path": str(data)}, "log_level": "info"})
    argv = python_module("bridge", "serve", "--config", str(config), "--listen", f"{LOOPBACK}:{free_port()}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], code: int, says: str, path: Path) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert says in errors[0] and str(path) in errors[0], errors[0]
    assert "Traceback" not in result.stderr and "listening" not in result.stderr, result.stderr


@pytest.mark.parametrize("damage", DAMAGE)
def test_serve_refuses_a_damaged_emptied_or_foreign_outbox_in_one_line_with_exit_65(
    tmp_path: Path, damage: str
) -> None:
    """Corrupt pages, a truncated, emptied or deleted file, a text file, another app's database: exit 65, one line."""
    data = tmp_path / "data"
    asyncio.run(fill(data))
    harm, says = DAMAGE[damage]
    harm(data)

    result = serve_once(tmp_path, data)

    assert_refused_in_one_line(result, EXIT_OUTBOX_UNUSABLE, says, data / "outbox.sqlite3")
    assert "to start with an empty outbox, move outbox.sqlite3* and outbox.lock out of" in result.stderr


def test_serve_refuses_an_outbox_it_cannot_read_in_one_line_with_exit_74(tmp_path: Path) -> None:
    """An outbox path the bridge cannot open (here a directory where the file should be): exit 74, one line."""
    data = tmp_path / "data"
    (data / "outbox.sqlite3").mkdir(parents=True)

    result = serve_once(tmp_path, data)

    assert_refused_in_one_line(result, EXIT_OUTBOX_UNAVAILABLE, "cannot be read", data / "outbox.sqlite3")


def test_a_second_bridge_on_the_same_outbox_is_refused_in_one_line_with_exit_75(
    tmp_path: Path, make_bridge: Callable[..., Bridge]
) -> None:
    """Regression: the second bridge logged "listening", then a 20-line traceback. Now: refused first, naming the
    running bridge's pid, exit 75; the first one keeps working."""
    first = make_bridge()
    assert first.proc is not None
    data = Path(yaml.safe_load(first.config_path.read_text())["storage"]["path"])

    result = serve_once(tmp_path, data)

    says = f"is in use by another bridge process (pid {first.proc.pid})"
    assert_refused_in_one_line(result, EXIT_OUTBOX_IN_USE, says, data / "outbox.sqlite3")
    assert httpx.get(f"{first.url}/-/ready").status_code == 200


# -- failing while running -------------------------------------------------------------------------------


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


def fill_disk(directory: Path) -> Path:
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

    filler = fill_disk(outbox_dir)
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
