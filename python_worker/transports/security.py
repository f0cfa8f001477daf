"""Who may call a worker, whatever the transport (gRPC, HTTP, metrics): the token, the TLS files, the hosts a
request may name, the refusal to serve a non-loopback address without them, and what a wrong token costs. Each
transport enforces them its own way (``grpc/security.py``: an interceptor and grpcio's credentials;
``http/auth.py``: headers, a login session; the HTTP front and ``/metrics`` take their TLS from
:meth:`ServerSecurity.ssl_context`), through the one check here (:meth:`ServerSecurity.token_matches`,
:class:`AuthPenalty`). The local link (stdin/stdout) is the pool's own pipe and is not gated.

Every TCP listener needs a credential: with no token configured and no ``--no-auth``, ``serve`` makes one
(:func:`generate_token`, 256 bits) and writes it to its ready file, as Jupyter does.

A wrong or missing token is never answered at once: :class:`AuthPenalty` holds each refusal for
:data:`PENALTY_S` and releases refusals at most :data:`MAX_REFUSALS_PER_S` per second across every front of the
worker, the rest queued in order. A right token is never held. Nothing is keyed on the client's address: on a
shared machine every local client is 127.0.0.1, so a lockout by address would let any local user lock every
other out; instead the transports hold the offending call (a coroutine, never a thread or a call slot) and
close or serialize the offending connection.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "KRAIT_TOKEN"
TOKEN_FILE_ENV = "KRAIT_TOKEN_FILE"

# how long a refusal for a wrong or missing token is held before it is answered
PENALTY_S = 1.0
# refusals answered per second at most, across every front of a worker (the others wait their turn)
MAX_REFUSALS_PER_S = 32.0


class SecurityConfigError(ValueError):
    """The serving or client security options are unusable (the message says which and why)."""


def read_token(path: str | None, *, env: bool = True) -> str | None:
    """The token from ``path`` (surrounding whitespace dropped), else from ``$KRAIT_TOKEN`` when ``env``."""
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise SecurityConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        if not token:
            raise SecurityConfigError(f"the token file {path} is empty")
        return token
    if env and os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    return None


def client_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The token a client sends: ``token``, else the one in ``token_file``, else ``$KRAIT_TOKEN``, else the file
    named by ``$KRAIT_TOKEN_FILE`` (None: send none)."""
    if token:
        return token
    if token_file:
        return read_token(token_file)
    found = read_token(None)
    if found is None and os.environ.get(TOKEN_FILE_ENV, "").strip():
        found = read_token(os.environ[TOKEN_FILE_ENV].strip(), env=False)
    return found


def generate_token() -> str:
    """A new random token: 256 bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def read_file(path: str, what: str) -> bytes:
    """The bytes of ``path``; :class:`SecurityConfigError` naming ``what`` it is when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def host_name(host_header: str) -> str:
    """The host name of a ``Host`` header value (port and IPv6 brackets dropped), lower case."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1 : host.index("]")].lower() if "]" in host else host.lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a wildcard or a name is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(slots=True, frozen=True)
class ServerSecurity:
    """TLS files (PEM paths), the token, ``insecure`` (serve a routable address without TLS and a token),
    ``no_auth`` (serve without any credential: no token is made when none is given) and ``allowed_hosts`` (the
    names an HTTP request's ``Host`` may carry: see :meth:`host_allowed`)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line or traceback
    insecure: bool = False
    no_auth: bool = False
    allowed_hosts: tuple[str, ...] = ()

    def token_matches(self, given: str | bytes | None) -> bool:
        """Constant-time check of a presented token (False when this worker has none)."""
        if not self.token or not given:
            return False
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token.encode())

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server side's TLS context from the TLS files (client certificates required when ``tls_client_ca``
        is set), or None without TLS. Raises ``OSError``/``ssl.SSLError`` for files that do not load."""
        if not (self.tls_cert and self.tls_key):
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            context.load_verify_locations(self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def authenticated(self) -> bool:
        """Callers must prove who they are (a token, or a client certificate under mutual TLS)."""
        return bool(self.token or self.tls_client_ca)

    def host_allowed(self, host_header: str) -> bool:
        """May a request naming ``host_header`` in its ``Host`` be served? A name in ``allowed_hosts`` always
        (``*`` any); without that list, any name when the worker needs a token or a client certificate, else only
        loopback names (DNS rebinding: a page whose own name resolves to 127.0.0.1). ``insecure`` does not skip
        this check: it only allows a routable address without TLS and a token."""
        name = host_name(host_header)
        if self.allowed_hosts:
            return "*" in self.allowed_hosts or name in self.allowed_hosts
        return self.authenticated or is_loopback(name)

    def check(self, host: str) -> None:
        """Raise :class:`SecurityConfigError` for options that cannot work or would expose the worker."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SecurityConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        if self.token and self.no_auth:
            raise SecurityConfigError("--no-auth and a token (--token-file or $KRAIT_TOKEN) contradict each other")
        if is_loopback(host) or self.insecure:
            return
        # a token in plain text can be read off the network; TLS alone lets anyone who reaches the port call
        if not self.tls_cert or not (self.token or self.tls_client_ca):
            missing = "TLS (--tls-cert/--tls-key)" if not self.tls_cert else "a token (--token-file or $KRAIT_TOKEN)"
            raise SecurityConfigError(
                f"refusing to serve {host}, which is not a loopback address, without {missing}: anyone who reaches "
                "the port could call every tool and read every session. Serve it with TLS and a token (or a "
                "client CA, --tls-client-ca), or pass --insecure to do it anyway."
            )

    def tls_files(self) -> tuple[bytes, bytes, bytes | None] | None:
        """The TLS key, certificate and client CA (None without mutual TLS) as PEM bytes; None for plain text.
        Raises :class:`SecurityConfigError` naming a file that cannot be read."""
        if not self.tls_cert or not self.tls_key:
            return None
        client_ca = read_file(self.tls_client_ca, "client CA file") if self.tls_client_ca else None
        return read_file(self.tls_key, "TLS key file"), read_file(self.tls_cert, "TLS certificate file"), client_ca

    def describe(self) -> str:
        parts = ["mutual TLS" if self.tls_client_ca else "TLS" if self.tls_cert else "plain text"]
        if self.token:
            parts.append("token")
        return " + ".join(parts)


class AuthPenalty:
    """When a refusal for a wrong or missing token may be answered: at least :data:`PENALTY_S` after it came, and
    at most :data:`MAX_REFUSALS_PER_S` refusals a second across the worker, in order. Thread-safe (every front
    has its own event loop): a front asks :meth:`delay` and sleeps that long in a coroutine, holding no thread
    and no call slot. The number of refusals waiting is :attr:`pending`."""

    def __init__(self, penalty_s: float = PENALTY_S, per_second: float = MAX_REFUSALS_PER_S) -> None:
        self._penalty = penalty_s
        self._spacing = 1.0 / per_second
        self._next = 0.0  # the earliest moment the next refusal may be answered (monotonic)
        self._lock = threading.Lock()
        self.refused = 0  # refusals so far (tests, metrics)

    def delay(self) -> float:
        """Seconds to hold the refusal of a wrong token that has just come."""
        now = time.monotonic()
        with self._lock:
            at = max(now + self._penalty, self._next)
            self._next = at + self._spacing
            self.refused += 1
        return at - now

    @property
    def pending(self) -> float:
        """How far ahead refusals are booked (seconds), 0 when none are waiting beyond their penalty."""
        with self._lock:
            return max(0.0, self._next - time.monotonic() - self._penalty)


# one per worker process: every front's refusals share it
PENALTY = AuthPenalty()
