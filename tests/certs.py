"""Certificates made at test time with the openssl command: a CA, a server certificate for the loopback
addresses the remote tests bind (127.0.0.2, 127.0.0.3, localhost, and workers.krait.test, the name the DNS test
resolves to them), a client certificate, a server certificate signed by a second CA (an untrusted server's),
and one for another host (a host-name mismatch)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    """Paths of the PEM files."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    ca = property(lambda self: self.path("ca"))
    server_crt = property(lambda self: self.path("server.crt"))
    server_key = property(lambda self: self.path("server.key"))
    client_crt = property(lambda self: self.path("client.crt"))
    client_key = property(lambda self: self.path("client.key"))
    rogue_crt = property(lambda self: self.path("rogue.crt"))
    rogue_key = property(lambda self: self.path("rogue.key"))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(dir: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key.pem", "-out", f"{name}.pem", cwd=dir)  # fmt: skip


SERVER_NAMES = "IP:127.0.0.2,IP:127.0.0.3,DNS:localhost,DNS:workers.krait.test"


def _signed(dir: Path, name: str, ca: str, *, server: bool, san: str = SERVER_NAMES) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=krait-{name}",
             "-keyout", f"{name}.key.pem", "-out", f"{name}.csr", cwd=dir)  # fmt: skip
    ext = dir / f"{name}.ext"
    if server:
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key.pem",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt.pem", cwd=dir)  # fmt: skip


def make_certs(dir: Path) -> Certs:
    """``ca.pem``; ``server.crt.pem``/``server.key.pem`` and ``client.crt.pem``/``client.key.pem`` signed by it;
    ``rogue.crt.pem``/``rogue.key.pem``, a server certificate signed by another CA; ``elsewhere.crt.pem``/
    ``elsewhere.key.pem``, signed by the CA for another host (127.0.0.9)."""
    dir.mkdir(parents=True, exist_ok=True)
    _ca(dir, "ca")
    _ca(dir, "otherca")
    _signed(dir, "server", "ca", server=True)
    _signed(dir, "client", "ca", server=False)
    _signed(dir, "rogue", "otherca", server=True)
    _signed(dir, "elsewhere", "ca", server=True, san="IP:127.0.0.9,DNS:elsewhere.invalid")
    return Certs(dir)
