"""Who may call the HTTP front: the worker's token (the same ``--token-file``/``$KRAIT_TOKEN`` as gRPC), as an
``Authorization: Bearer`` header or through a login session, and where a browser's request comes from.

- One rule for every path that looks at a token (a bearer on any route, ``GET /v1/auth``, ``POST /v1/login``,
  the WebSocket handshake): :meth:`ServerSecurity.token_matches` (constant-time), and a wrong or missing token is
  answered 401 only after :data:`~python_worker.transports.security.PENALTY`'s delay, with ``Connection: close``
  (:func:`refusal_delay`). Nothing is counted per client address: on a shared machine every local client is
  127.0.0.1, so a lockout by address would let any local user lock every other out.
- A browser page logs in once (``POST /v1/login`` with the token) and gets two halves of a session: an opaque id
  in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` under TLS), and a secret in the JSON answer that the page
  keeps in memory (``sessionStorage``) and sends as the ``X-Krait-Session`` header, or as the WebSocket
  subprotocol ``krait.session.<secret>``. Browsers send a cookie to every port of a host, so a server of another
  local user on 127.0.0.1:18999 can read the cookie; it cannot read the secret (``sessionStorage`` is per origin,
  port included): a cookie without its secret is refused.
- A cookie is sent by the browser whatever page made the request, so a cookie-authenticated ``POST`` and the
  WebSocket handshake must carry an ``Origin`` equal to this server's own (cross-site request forgery, cross-site
  WebSocket hijacking); any request whose ``Origin`` or ``Sec-Fetch-Site`` says it comes from another site is
  refused, token or not.
- ``Host`` is checked by :meth:`ServerSecurity.host_allowed` on every request, ``--insecure`` or not: a page that
  rebinds its own DNS name to 127.0.0.1 cannot reach a worker without a token.

Sessions live in memory, at most :data:`MAX_SESSIONS` (the oldest go first) for at most
:data:`SESSION_MAX_AGE_S` each.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

from ..security import PENALTY, ServerSecurity
from .errors import HttpError, forbidden, unauthenticated

COOKIE = "krait_session"
SESSION_HEADER = "x-krait-session"
SUBPROTOCOL = "krait.v1"  # the WebSocket subprotocol the front speaks (echoed when offered)
SESSION_SUBPROTOCOL = "krait.session."  # + the session's secret, offered beside SUBPROTOCOL by the page
SESSION_MAX_AGE_S = 12 * 3600
MAX_SESSIONS = 1000


def refusal_delay(exc: BaseException) -> float:
    """How long to hold the answer to ``exc``: the penalty of a wrong or missing token, 0 for anything else."""
    if isinstance(exc, HttpError) and exc.code.name == "UNAUTHENTICATED":
        return PENALTY.delay()
    return 0.0


class Sessions:
    """The login sessions: id (the cookie) -> (secret, expiry)."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def create(self) -> tuple[str, str]:
        """A new session: its id (for the cookie) and its secret (for the page)."""
        session, secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock:
            self._ids[session] = (secret.encode(), time.monotonic() + SESSION_MAX_AGE_S)
            while len(self._ids) > MAX_SESSIONS:
                self._ids.popitem(last=False)
        return session, secret

    def exists(self, session: str) -> bool:
        return self._entry(session) is not None

    def valid(self, session: str, secret: str) -> bool:
        """Is ``session`` alive and ``secret`` its own? (constant-time)"""
        entry = self._entry(session)
        return entry is not None and bool(secret) and hmac.compare_digest(secret.encode("utf-8", "replace"), entry[0])

    def drop(self, session: str) -> None:
        with self._lock:
            self._ids.pop(session, None)

    def _entry(self, session: str) -> tuple[bytes, float] | None:
        if not session:
            return None
        with self._lock:
            entry = self._ids.get(session)
            if entry is not None and entry[1] < time.monotonic():
                del self._ids[session]
                return None
            return entry


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    return [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def session_secret(headers: Mapping[str, str]) -> str:
    """The session secret a request presents: the header, else a WebSocket subprotocol."""
    secret = headers.get(SESSION_HEADER, "")
    if secret:
        return secret.strip()
    for protocol in offered_subprotocols(headers):
        if protocol.startswith(SESSION_SUBPROTOCOL):
            return protocol[len(SESSION_SUBPROTOCOL) :]
    return ""


class Auth:
    """The token check, the login sessions, the Host and origin checks of one HTTP front."""

    def __init__(self, security: ServerSecurity) -> None:
        self.security = security
        self.tls = bool(security.tls_cert)
        self.sessions = Sessions()

    @property
    def required(self) -> bool:
        return bool(self.security.token)

    def token_matches(self, given: str) -> bool:
        return self.security.token_matches(given)

    def bearer(self, headers: Mapping[str, str]) -> bool | None:
        """None without an ``Authorization`` header, else whether it carries this worker's token as a bearer."""
        authorization = headers.get("authorization")
        if authorization is None:
            return None
        scheme_name, _, given = authorization.partition(" ")
        return scheme_name.lower() == "bearer" and self.token_matches(given.strip())

    def authenticate(self, headers: Mapping[str, str], cookies: Mapping[str, str], *, method: str, scheme: str) -> str:
        """How the request is authenticated (``"bearer"``, ``"session"`` or ``"none"`` when no token is needed);
        raises UNAUTHENTICATED (the caller holds it for the penalty) or PERMISSION_DENIED. ``method`` is the HTTP
        method (``"WEBSOCKET"`` for a handshake)."""
        self.check_host(headers)
        self.check_origin(headers, scheme)
        if not self.required:
            return "none"
        bearer = self.bearer(headers)
        if bearer is not None:
            if not bearer:
                raise unauthenticated("a wrong token in 'Authorization: Bearer <token>'")
            return "bearer"
        session = cookies.get(COOKIE, "")
        if self.sessions.valid(session, session_secret(headers)):
            if method != "GET" and "origin" not in headers:
                raise forbidden(f"a {method} authenticated by a login session must carry an Origin header")
            return "session"
        if session and self.sessions.exists(session):
            raise unauthenticated(
                "the login cookie needs its session secret (the X-Krait-Session header, or the WebSocket "
                "subprotocol krait.session.<secret>) from the login's answer"
            )
        if session:
            raise unauthenticated("the login session has expired or was logged out: log in again")
        raise unauthenticated("this worker needs 'Authorization: Bearer <token>' or a login (POST /v1/login)")

    def logged_in(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Is the request authenticated by a login session (or is no token needed)?"""
        return not self.required or self.sessions.valid(cookies.get(COOKIE, ""), session_secret(headers))

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
        """Only the hosts :meth:`ServerSecurity.host_allowed` allows (DNS rebinding), ``--insecure`` or not."""
        host = headers.get("host", "")
        if not self.security.host_allowed(host):
            why = (
                "it is not in --allowed-hosts"
                if self.security.allowed_hosts
                else "it is not a loopback address and this worker has no token (see --allowed-hosts)"
            )
            raise forbidden(f"Host {host[:100]!r} is refused: {why}")

    def cookie_attributes(self) -> dict[str, object]:
        return {"httponly": True, "samesite": "strict", "path": "/", "secure": self.tls, "max_age": SESSION_MAX_AGE_S}
