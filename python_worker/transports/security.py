"""Who may call a worker, whatever the transport (gRPC, HTTP): the token, the TLS files, and the refusal to serve a
non-loopback address without them. Each transport enforces them its own way (``grpc/security.py``: an
interceptor and grpcio's credentials; ``http/auth.py``: headers and a login cookie, uvicorn's TLS). The local link
(stdin/stdout) is the pool's own pipe and is not gated.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "KRAIT_TOKEN"


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


def read_file(path: str, what: str) -> bytes:
    """The bytes of ``path``; :class:`SecurityConfigError` naming ``what`` it is when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


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
    """TLS files (PEM paths), the token, and ``insecure`` (serve a routable address without them)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line or traceback
    insecure: bool = False

    def check(self, host: str) -> None:
        """Raise :class:`SecurityConfigError` for options that cannot work or would expose the worker."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SecurityConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
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
