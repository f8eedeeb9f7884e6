"""Run a shell script as a reader of the docs would, inside a throw-away sandbox.

The sandbox has its own network namespace (only its own loopback, so the docs' fixed ports 9095
and 9096 never meet another test's or the developer's processes), its own ``/tmp``, a
copy-on-write view of the checkout (what the script writes there vanishes with it), and its own
PID namespace: every process the script starts ends when it does. It needs root and
``unshare(1)``; without them the tests that use it skip, unless ``BRIDGE_REQUIRE_UNSHARE=1``
(CI) makes that a failure.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_ENV = "BRIDGE_REQUIRE_UNSHARE"

# Scratch space on a private /dev/shm; the checkout is bound there first, so that the new /tmp
# cannot hide it (a clone under /tmp) before the copy-on-write view is mounted at its own path.
_ENTER = """
set -euo pipefail
"$IP" link set lo up
mount -t tmpfs tmpfs /dev/shm
mkdir /dev/shm/lower /dev/shm/upper /dev/shm/work
mount --bind "$ROOT" /dev/shm/lower
mount -t tmpfs tmpfs /tmp
mkdir -p "$ROOT"
mount -t overlay overlay -o lowerdir=/dev/shm/lower,upperdir=/dev/shm/upper,workdir=/dev/shm/work "$ROOT"
cd "$ROOT"
exec bash -c "$1"
"""


def _command(root: Path, script: str) -> list[str]:
    unshare = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
    return [*unshare, "bash", "-c", _ENTER, "sandbox", script]


@functools.cache
def _unavailable(root: Path) -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network, mount and PID namespaces)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) (util-linux, iproute2)"
    probe = subprocess.run(
        _command(root, "true"),
        env={**os.environ, "ROOT": str(root), "IP": shutil.which("ip") or "ip"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"namespaces or overlayfs refused: {probe.stderr.strip()[-300:]}"
    return None


def require(root: Path) -> None:
    """Skip (or fail, when REQUIRE_ENV=1) if the sandbox cannot run here."""
    reason = _unavailable(root)
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"the docs sandbox {reason}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(f"the docs sandbox {reason}")


def run(root: Path, script: str, env: dict[str, str], timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash in the sandbox, in the checkout ``root``, with exactly ``env`` (plus ROOT, IP)."""
    require(root)
    full = {**env, "ROOT": str(root), "IP": shutil.which("ip") or "ip"}
    return subprocess.run(_command(root, script), env=full, capture_output=True, text=True, timeout=timeout)
