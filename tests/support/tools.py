"""Find the external tools the deployment tests use, and decide between skip and fail.

A tool that is missing skips its tests on a developer's machine, but fails them when
the environment variable that CI sets says the tool is required (``.ci/run`` installs
every tool and sets them all).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def find_tool(*names: str) -> str | None:
    """The first of ``names`` found next to the running interpreter (a venv's bin), then on PATH."""
    here = Path(sys.executable).parent
    for name in names:
        candidate = here / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_tool(*names: str, env: str, hint: str) -> str:
    """Path of the tool, or skip the test (fail instead when ``env`` is set to 1)."""
    found = find_tool(*names)
    if found is None:
        message = f"{names[0]} is not installed ({hint})"
        if os.environ.get(env) == "1":
            pytest.fail(f"{message}; {env}=1 requires it")
        pytest.skip(message)
    return found
