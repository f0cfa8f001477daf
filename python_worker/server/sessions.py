"""SessionStore: per-session state kept by one worker, bounded in size and in time.

- A session id is at most :data:`MAX_SESSION_ID_BYTES` bytes.
- At most ``max_sessions`` sessions are kept. A new session at the cap evicts the least recently used one that
  no call is using (``on_session_end`` runs for it, as for an expired session). Eviction rather than refusal:
  a session's state is already best effort (it goes with its worker, and after the idle TTL), so the worker
  keeps serving new sessions, while refusal would let sessions that callers forgot to end lock everyone else
  out until they expire. Only when every session is in use (``max_sessions`` below the calls in flight) is a
  new one refused, with RESOURCE_EXHAUSTED.
- A session idle for ``ttl`` seconds expires; a sweeper thread looks every ``min(ttl / 2, 30)`` seconds, so
  expiry needs no later call. A session is never evicted or expired while a call uses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import grpc

from ..errors import CallError, InvalidArguments, clip
from ..sdk import Session

log = logging.getLogger("krait.worker")

# Session ids come from callers and are kept for the session's life: bounded, like every key a caller chooses.
MAX_SESSION_ID_BYTES = 256
DEFAULT_MAX_SESSIONS = 10_000


def check_session_id(session_id: str) -> None:
    """Raise InvalidArguments for a session id longer than :data:`MAX_SESSION_ID_BYTES` (UTF-8)."""
    size = len(session_id.encode())
    if size > MAX_SESSION_ID_BYTES:
        raise InvalidArguments(
            f"session_id {clip(session_id)!r} is {size} bytes long; at most {MAX_SESSION_ID_BYTES} are allowed"
        )


class SessionStore:
    """Thread-safe map of session id -> :class:`Session`, least recently used first."""

    def __init__(
        self,
        ttl: float = 3600.0,
        on_end: Callable[[Session], None] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._in_use: dict[str, int] = {}  # session id -> calls using it now
        self._lock = threading.Lock()
        self._ttl = ttl
        self._max = max_sessions
        self._on_end = on_end
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def start_sweeping(self) -> None:
        """Expire idle sessions on a timer, on a daemon thread, until :meth:`close`."""
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="session-sweeper", daemon=True)
            self._sweeper.start()

    def acquire(self, session_id: str) -> Session:
        """The session for a call starting now, created if new; it is not evicted nor expired until
        :meth:`release`."""
        session, _ = self._touch(session_id, None, use=True)
        return session

    def release(self, session_id: str) -> None:
        """The call that acquired ``session_id`` has ended; the session's idle time starts now."""
        with self._lock:
            left = self._in_use.get(session_id, 0) - 1
            if left > 0:
                self._in_use[session_id] = left
            else:
                self._in_use.pop(session_id, None)
            session = self._sessions.get(session_id)
            if session is not None:
                session.last_used = time.monotonic()
                self._sessions.move_to_end(session_id)

    def initialize(self, session_id: str, metadata: dict[str, str] | None = None) -> bool:
        """Create or refresh a session; True if it was created."""
        return self._touch(session_id, metadata, use=False)[1]

    def _touch(self, session_id: str, metadata: dict[str, str] | None, *, use: bool) -> tuple[Session, bool]:
        now = time.monotonic()
        evicted: Session | None = None
        with self._lock:
            session = self._sessions.get(session_id)
            created = session is None
            if session is None:
                if len(self._sessions) >= self._max:
                    evicted = self._evict_one()
                session = Session(session_id=session_id, created_at=now)
                self._sessions[session_id] = session
            else:
                self._sessions.move_to_end(session_id)
            if metadata:
                session.metadata.update(metadata)
            session.last_used = now
            if use:
                self._in_use[session_id] = self._in_use.get(session_id, 0) + 1
        if evicted is not None:
            log.warning(
                "session %r evicted: this worker keeps at most %d sessions (--max-sessions); it was the least"
                " recently used",
                clip(evicted.session_id),
                self._max,
            )
            self._end([evicted])
        return session, created

    def _evict_one(self) -> Session:
        # under the lock
        for session_id in self._sessions:
            if session_id not in self._in_use:
                return self._sessions.pop(session_id)
        raise CallError(
            f"this worker keeps at most {self._max} sessions (--max-sessions) and every one is in use by a call",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            error_type="SessionLimit",
        )

    def cleanup(self, session_id: str) -> bool:
        """Drop a session; True if it existed."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._end([session])
        return True

    def sweep(self) -> list[Session]:
        """End the sessions idle for longer than the TTL (none that a call is using); returns them."""
        now = time.monotonic()
        expired = []
        with self._lock:
            for session_id, session in list(self._sessions.items()):
                if now - session.last_used <= self._ttl:
                    break  # least recently used first: the rest are younger
                if session_id not in self._in_use:
                    expired.append(self._sessions.pop(session_id))
        if expired:
            log.info("%d session(s) expired after %g s idle", len(expired), self._ttl)
        self._end(expired)
        return expired

    def _sweep_loop(self) -> None:
        interval = max(0.02, min(self._ttl / 2, 30.0))
        while not self._closed.wait(interval):
            try:
                self.sweep()
            except Exception:  # a bug here must not end expiry for the worker's life
                log.exception("sweeping expired sessions failed")

    def close(self) -> None:
        """Stop the sweeper and end every session."""
        self._closed.set()
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        self._end(sessions)

    def _end(self, sessions: list[Session]) -> None:
        for session in sessions:
            if self._on_end is not None:
                try:
                    self._on_end(session)
                except Exception:
                    log.exception("on_session_end failed for session %r", clip(session.session_id))
