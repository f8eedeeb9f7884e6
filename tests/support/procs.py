"""Start real processes on loopback, wait until they answer, stop them by PID.

Every process a test starts goes through :class:`Proc`, so it is always stopped
(SIGTERM, then SIGKILL after a grace period) and its output is kept in a log
file that the test can print when something goes wrong.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Proc:
    """One child process with its log file; stop() is idempotent."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 20.0, expect: int = 200) -> None:
        """Poll ``url`` until it answers ``expect``; fail with the process log otherwise."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.popen.returncode}:\n{self.output()}")
            try:
                response = httpx.get(url, timeout=1.0)
                if response.status_code == expect:
                    return
                last = response.status_code
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"{url} not ready after {timeout}s (last: {last!r}):\n{self.output()}")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def kill9(self) -> None:
        """Kill the process at once, as the OOM killer or a node failure would."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def wait(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._log.close()
        return self.popen.returncode


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args`` with the interpreter running the tests."""
    return [sys.executable, "-m", module, *args]


def start_on_free_port(
    argv_for: Callable[[int], list[str]], log_path: Path, ready_path: str, *, attempts: int = 3, timeout: float = 30.0
) -> tuple[Proc, int]:
    """Start a server on a fresh loopback port and wait for ``ready_path`` to answer 200.

    free_port() only proves the port was free a moment ago; if another process takes it
    before the server binds, the start is retried on a new port (only for that reason).
    """
    for attempt in range(1, attempts + 1):
        offset = log_path.stat().st_size if log_path.exists() else 0
        port = free_port()
        proc = Proc(argv_for(port), log_path)
        try:
            proc.wait_http(f"http://{LOOPBACK}:{port}{ready_path}", timeout=timeout)
            return proc, port
        except RuntimeError:
            proc.stop()
            if attempt == attempts or "address already in use" not in proc.output()[offset:]:
                raise
        except BaseException:
            proc.stop()
            raise
    raise AssertionError("unreachable")
