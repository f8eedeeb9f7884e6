"""A process and everything it started, read from /proc: PIDs and memory.

RSS counts every page a process maps, so pages shared between processes (the forkserver and
the workers forked from it share the interpreter and the imported pipeline) are counted once
per process. PSS splits each shared page between the processes that map it: the PSS of a
process tree sums to the memory it really holds, which is what a pod's cgroup is charged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as file:
                found.extend(int(child) for child in file.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children and so on (not ``pid`` itself)."""
    found: list[int] = []
    for child in children(pid):
        found.append(child)
        found.extend(descendants(child))
    return found


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Memory:
    """Bytes summed over a process tree."""

    rss: int
    pss: int
    processes: int


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
        for line in file:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_memory(pid: int) -> Memory:
    """RSS and PSS of ``pid`` and all its descendants (a process that ends meanwhile counts 0)."""
    rss = pss = count = 0
    for member in (pid, *descendants(pid)):
        try:
            rss += _rss(member)
            pss += _pss(member)
            count += 1
        except (OSError, ValueError):
            continue
    return Memory(rss, pss, count)
