"""SessionStore: per-session state kept by one worker, expired after an idle time-to-live."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import InvalidArguments, clip
from ..sdk import Session

log = logging.getLogger("krait.worker")

# Session ids come from callers and are kept for the session's life: bounded, like every key a caller chooses.
MAX_SESSION_ID_BYTES = 256


def check_session_id(session_id: str) -> None:
    """Raise InvalidArguments for a session id longer than :data:`MAX_SESSION_ID_BYTES` (UTF-8)."""
    size = len(session_id.encode())
    if size > MAX_SESSION_ID_BYTES:
        raise InvalidArguments(
            f"session_id {clip(session_id)!r} is {size} bytes long; at most {MAX_SESSION_ID_BYTES} are allowed"
        )


class SessionStore:
    """Thread-safe map of session id -> :class:`Session`; idle sessions expire after ``ttl`` seconds."""

    def __init__(self, ttl: float = 3600.0, on_end: Callable[[Session], None] | None = None) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._ttl = ttl
        self._on_end = on_end
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._sessions)

    def touch(self, session_id: str, metadata: dict[str, str] | None = None) -> Session:
        """The session, created if new; marks it used now."""
        return self._touch(session_id, metadata)[0]

    def initialize(self, session_id: str, metadata: dict[str, str] | None = None) -> bool:
        """Create or refresh a session; True if it was created."""
        return self._touch(session_id, metadata)[1]

    def _touch(self, session_id: str, metadata: dict[str, str] | None) -> tuple[Session, bool]:
        now = time.monotonic()
        expired = self._sweep(now)
        with self._lock:
            session = self._sessions.get(session_id)
            created = session is None
            if session is None:
                session = Session(session_id=session_id, created_at=now)
                self._sessions[session_id] = session
            if metadata:
                session.metadata.update(metadata)
            session.last_used = now
        self._end(expired)
        return session, created

    def cleanup(self, session_id: str) -> bool:
        """Drop a session; True if it existed."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._end([session])
        return True

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        self._end(sessions)

    def _sweep(self, now: float) -> list[Session]:
        if now < self._next_sweep:
            return []
        with self._lock:
            self._next_sweep = now + min(self._ttl, 60.0)
            old = [s for s in self._sessions.values() if now - s.last_used > self._ttl]
            for s in old:
                del self._sessions[s.session_id]
        return old

    def _end(self, sessions: list[Session]) -> None:
        for session in sessions:
            if self._on_end is not None:
                try:
                    self._on_end(session)
                except Exception:
                    log.exception("on_session_end failed for session %s", session.session_id)
