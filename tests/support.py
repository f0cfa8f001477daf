"""Test helpers shared by every suite: waiting for state instead of sleeping for it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.01, what: str = "") -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    ``check`` may also assert: an AssertionError means "not yet". After ``timeout`` seconds the last
    AssertionError is raised again (or one naming ``what`` and the last value), so a failure says what
    never happened.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        else:
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what or 'the condition'} did not hold within {timeout} s (last: {value!r})")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, exited but not reaped yet, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if "\nState:\tZ" in status:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
