"""Imported by multiprocessing's forkserver alone (its preload list), never by the server.

The forkserver imports the pipeline once for every worker it forks; it and its workers run at a
lower priority than the server (``WORKER_NICE``), so neither that import at start nor a busy
worker takes the CPU from the event loop when both want it.
"""

from __future__ import annotations

import contextlib
import os

WORKER_NICE = 10

with contextlib.suppress(OSError):
    os.nice(WORKER_NICE)

import bridge.workers  # noqa: E402,F401  (after the nice: this import is the forkserver's start-up work)
