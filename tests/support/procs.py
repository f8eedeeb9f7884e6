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
from types import TracebackType
from typing import Self

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


class LoopbackServer:
    """A server binary on a free loopback port, ready once ``/-/ready`` answers: start, stop, URL, log.

    Subclasses set ``name`` and ``log_path`` and implement :meth:`_prepare`, which finds the
    binary, writes what it needs and returns its argv for a given port.
    """

    name = "server"
    log_path: Path
    #: free_port() only proves the port was free a moment ago; another process may take it
    #: before the server binds. Retrying with a fresh port is cheap.
    start_attempts = 3

    def __init__(self) -> None:
        self.port: int | None = None
        self._proc: Proc | None = None

    def _prepare(self) -> Callable[[int], list[str]]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        """Prepare, start the server and wait until ``/-/ready`` answers 200."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        argv_for = self._prepare()
        self._proc, self.port = start_on_free_port(
            argv_for, self.log_path, "/-/ready", attempts=self.start_attempts, timeout=timeout
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); safe to call more than once."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise RuntimeError(f"{self.name} not started")
        return f"http://{LOOPBACK}:{self.port}"

    def output(self) -> str:
        """Everything the server logged so far (also readable after stop())."""
        if self._proc is not None:
            return self._proc.output()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
