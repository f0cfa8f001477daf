"""How a worker stops: within its grace, whatever its tools are doing, and with the processes its tools started.

- A supervised worker (stdin a pipe, or ``--process-group on``) leads its own process group from its first
  moment, so its group id is its pid: a supervisor stops the worker and everything its tools started with one
  ``kill -TERM -- -PID``, and the worker finds those processes itself when it stops on its own.
- A stop is requested by SIGTERM/SIGINT or by stdin closing (the supervisor has gone, even by SIGKILL). From
  then on the worker has ``grace`` seconds: a watchdog thread ends the process when they are up, because a tool
  blocked in ``time.sleep(30)`` holds one of grpcio's executor threads, which are not daemon threads and would
  keep the interpreter alive after ``serve`` returns.
- On the way out the worker stops the other members of its group (children and grandchildren of its tools,
  unless they left the group): SIGTERM, a short wait, then SIGKILL. Group members are found in ``/proc``
  (Linux); elsewhere they get SIGTERM through the group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("krait.worker")

# how long the processes of the group get to end after SIGTERM before SIGKILL (less when the grace is shorter)
GROUP_TERM_WAIT_S = 0.5


def lead_process_group() -> bool:
    """Make this process the leader of a new process group (group id = pid); False if it cannot."""
    if os.getpgrp() == os.getpid():
        return True
    try:
        os.setpgid(0, 0)
    except OSError as exc:  # a session leader cannot move to another group
        log.warning("cannot lead a process group (%s): processes the tools start may outlive the worker", exc)
        return False
    return True


def leads_process_group() -> bool:
    return os.getpgrp() == os.getpid()


def _group_members(pgid: int) -> list[int] | None:
    """Live processes of group ``pgid`` other than this one; None where ``/proc`` cannot tell."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # fields after the command name, which is in parentheses and may hold anything: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def stop_group(wait: float = GROUP_TERM_WAIT_S) -> None:
    """Stop every other process of this worker's group (only when it leads one): SIGTERM, up to ``wait``
    seconds for them to end, then SIGKILL."""
    if not leads_process_group():
        return
    pgid = os.getpid()
    members = _group_members(pgid)
    if members is None:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)  # this worker's own SIGTERM handler only asks for the stop under way
        return
    if not members:
        return
    log.info("stopping %d process(es) started by tools: %s", len(members), " ".join(map(str, members[:20])))
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, wait)
    while members and time.monotonic() < deadline:
        time.sleep(0.01)
        members = _group_members(pgid) or []
    members = _group_members(pgid) or []  # again: a process may have forked meanwhile
    if members:
        log.warning("%d process(es) ignored SIGTERM, killing them: %s", len(members), " ".join(map(str, members)))
        _signal_all(members, signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def exit_now(code: int) -> NoReturn:
    """End the process at once (after flushing what was written): no waiting for threads, no atexit."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class Shutdown:
    """The stop request, and the watchdog that ends the process ``grace`` seconds after it."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.reason = ""
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._deadline = 0.0

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        """Ask the worker to stop (safe from a signal handler and from any thread; only the first counts)."""
        # no lock and no logging here: a signal handler may run while this thread holds either
        if self._event.is_set():
            return
        self.reason = reason
        self._deadline = time.monotonic() + self.grace
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        self._event.set()

    def wait(self) -> str:
        """Block until a stop is requested; returns why."""
        while not self._event.wait(3600):
            pass
        return self.reason

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _watchdog(self) -> None:
        time.sleep(self.grace)
        log.warning("the shutdown grace (%g s) is over: exiting now", self.grace)
        stop_group(wait=0.0)
        exit_now(0)
