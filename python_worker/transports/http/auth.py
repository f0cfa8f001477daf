"""Who may call the HTTP front: the worker's token (the same ``--token-file``/``$KRAIT_TOKEN`` as gRPC), as an
``Authorization: Bearer`` header or through a login cookie, and where a browser's request comes from.

- A browser page cannot keep a token out of reach of scripts, nor put one in an ``EventSource`` or WebSocket
  request; it logs in once (``POST /v1/login`` with the token) and gets an opaque random session id in an
  ``HttpOnly; SameSite=Strict`` cookie (``Secure`` under TLS). The token never travels in a URL.
- A cookie is sent by the browser whatever page made the request, so a cookie-authenticated ``POST`` and the
  WebSocket handshake must carry an ``Origin`` equal to this server's own (cross-site request forgery,
  cross-site WebSocket hijacking); any request whose ``Origin`` or ``Sec-Fetch-Site`` says it comes from another
  site is refused, token or not.
- Without a token (loopback only, unless ``--insecure``), a request must name a loopback host in ``Host``: a
  page that rebinds its own DNS name to 127.0.0.1 cannot reach the worker.

Comparisons are constant-time (``hmac.compare_digest``). A client address that gave a wrong token
:data:`MAX_FAILURES` times in :data:`FAILURE_WINDOW_S` (by login or bearer header) is refused 429 until the
oldest of those failures is that old: guessing a token costs time. Sessions live in memory, at most
:data:`MAX_SESSIONS` (the oldest go first) for at most :data:`SESSION_MAX_AGE_S` each.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping

from ..security import is_loopback
from .errors import forbidden, too_many, unauthenticated

COOKIE = "krait_session"
SESSION_MAX_AGE_S = 12 * 3600
MAX_SESSIONS = 1000
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
MAX_CLIENTS_TRACKED = 10_000


class Failures:
    """Wrong tokens by client address, in the last :data:`FAILURE_WINDOW_S`."""

    def __init__(self) -> None:
        self._by_client: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raise 429 when ``client`` has used up its wrong tokens."""
        with self._lock:
            times = self._recent(client, time.monotonic())
            if times is not None and len(times) >= MAX_FAILURES:
                wait = times[0] + FAILURE_WINDOW_S - time.monotonic()
                raise too_many(f"{MAX_FAILURES} wrong tokens from this address: try again in {max(wait, 0):.0f} s")

    def add(self, client: str) -> None:
        with self._lock:
            now = time.monotonic()
            times = self._recent(client, now)
            if times is None:
                times = self._by_client[client] = deque(maxlen=MAX_FAILURES)
                while len(self._by_client) > MAX_CLIENTS_TRACKED:
                    self._by_client.popitem(last=False)
            times.append(now)

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._by_client.get(client)
        while times and times[0] < now - FAILURE_WINDOW_S:
            times.popleft()
        return times


class Sessions:
    """The login cookies' session ids."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, float] = OrderedDict()  # id -> expiry (monotonic)
        self._lock = threading.Lock()

    def create(self) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._ids[session] = time.monotonic() + SESSION_MAX_AGE_S
            while len(self._ids) > MAX_SESSIONS:
                self._ids.popitem(last=False)
        return session

    def valid(self, session: str) -> bool:
        with self._lock:
            expiry = self._ids.get(session)
            if expiry is None:
                return False
            if expiry < time.monotonic():
                del self._ids[session]
                return False
            return True

    def drop(self, session: str) -> None:
        with self._lock:
            self._ids.pop(session, None)


class Auth:
    """The token check, the login sessions and the origin checks of one HTTP front."""

    def __init__(self, token: str | None, *, tls: bool, insecure: bool) -> None:
        self._token = token.encode() if token else None
        self.tls = tls
        self.insecure = insecure
        self.sessions = Sessions()
        self.failures = Failures()

    @property
    def required(self) -> bool:
        return self._token is not None

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self._token)

    def check_token(self, given: str, client: str) -> bool:
        """:meth:`token_matches`, counting a wrong token against ``client`` (its address); raises 429 once it has
        given too many."""
        self.failures.check(client)
        if self.token_matches(given):
            return True
        self.failures.add(client)
        return False

    def authenticate(
        self, headers: Mapping[str, str], cookies: Mapping[str, str], *, method: str, scheme: str, client: str = ""
    ) -> str:
        """How the request is authenticated (``"bearer"``, ``"cookie"`` or ``"none"`` when no token is needed);
        raises UNAUTHENTICATED, PERMISSION_DENIED or (too many wrong tokens from ``client``) RESOURCE_EXHAUSTED.
        ``method`` is the HTTP method (``"WEBSOCKET"`` for a handshake)."""
        self.check_host(headers)
        self.check_origin(headers, scheme)
        if self._token is None:
            return "none"
        authorization = headers.get("authorization", "")
        if authorization:
            scheme_name, _, given = authorization.partition(" ")
            if scheme_name.lower() != "bearer" or not self.check_token(given.strip(), client):
                raise unauthenticated("a wrong token in 'Authorization: Bearer <token>'")
            return "bearer"
        session = cookies.get(COOKIE, "")
        if session and self.sessions.valid(session):
            if method != "GET" and "origin" not in headers:
                raise forbidden(f"a {method} authenticated by the login cookie must carry an Origin header")
            return "cookie"
        if session:
            raise unauthenticated("the login session has expired or was logged out: log in again")
        raise unauthenticated("this worker needs 'Authorization: Bearer <token>' or a login (POST /v1/login)")

    def logged_in(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        if self._token is None:
            return True
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return self.token_matches(authorization[7:].strip())
        session = cookies.get(COOKIE, "")
        return bool(session) and self.sessions.valid(session)

    def check_origin(self, headers: Mapping[str, str], scheme: str) -> None:
        """Refuse a request a browser says comes from another site."""
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scheme}://{headers.get('host', '')}"
            if origin.lower() != own.lower():
                raise forbidden(f"requests from origin {origin[:100]!r} are refused: only {own!r} may call")
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise forbidden(f"a {site} request is refused (Sec-Fetch-Site): only this worker's own page may call")

    def check_host(self, headers: Mapping[str, str]) -> None:
        """Without a token, only a loopback ``Host`` (DNS rebinding)."""
        if self._token is not None or self.insecure:
            return
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host.startswith("[") and "]" in host:
            name = host[1 : host.index("]")]
        if not is_loopback(name):
            raise forbidden(f"Host {host[:100]!r} is not a loopback address: this worker has no token")

    def cookie_attributes(self) -> dict[str, object]:
        return {"httponly": True, "samesite": "strict", "path": "/", "secure": self.tls, "max_age": SESSION_MAX_AGE_S}
