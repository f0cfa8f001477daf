"""Secure gRPC serving against real workers: TLS, mutual TLS, the token (health exempt, reflection behind it),
the refusal to expose a non-loopback address, and the client's and CLI's flags. Workers bind 127.0.0.2 only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from python_worker.client import Client, KraitError, UnauthenticatedError
from python_worker.transports.grpc.security import ClientTLS
from python_worker.transports.security import SecurityConfigError, ServerSecurity, is_loopback

from .certs import Certs, make_certs
from .workers import ROOT, Worker, running_worker, spawn

HOST = "127.0.0.2"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tls_worker(certs: Certs, token_file: str) -> Iterator[Worker]:
    args = ("--tls-cert", certs.server_crt, "--tls-key", certs.server_key, "--token-file", token_file)
    with running_worker("adapters.showcase:ShowcaseAdapter", *args, host=HOST) as worker:
        yield worker


def test_tls_and_token_serve_calls_and_streams(tls_worker: Worker, certs: Certs) -> None:
    with Client(tls_worker.target, token=TOKEN, tls=ClientTLS(ca=certs.ca), timeout=30) as client:
        assert client.execute("add", a=2, b=3) == 5
        with client.execute_stream("stream_progress", steps=3) as chunks:
            assert [c.data["step"] for c in chunks if not c.is_final] == [1, 2, 3]
        assert client.ping().worker_id


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_missing_or_wrong_token_is_unauthenticated(tls_worker: Worker, certs: Certs, token: str | None) -> None:
    with Client(tls_worker.target, token=token, tls=ClientTLS(ca=certs.ca), timeout=30) as client:
        with pytest.raises(UnauthenticatedError, match="authorization: Bearer") as err:
            client.execute("add", a=1, b=2)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(UnauthenticatedError):
            list(client.execute_stream("stream_progress", steps=2))
        with pytest.raises(grpc.RpcError) as rpc:
            client.list_tools()
        assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _secure_channel(worker: Worker, certs: Certs) -> grpc.Channel:
    return grpc.secure_channel(worker.target, grpc.ssl_channel_credentials(Path(certs.ca).read_bytes()))


def test_health_needs_no_token_and_reflection_needs_one(tls_worker: Worker, certs: Certs) -> None:
    with _secure_channel(tls_worker, certs) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as err:
            next(reflect.ServerReflectionInfo(iter([request]), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", f"Bearer {TOKEN}"),)
        response = next(reflect.ServerReflectionInfo(iter([request]), timeout=10, metadata=auth))
        assert "krait.v1.ToolWorker" in {s.name for s in response.list_services_response.service}


def test_an_untrusted_server_certificate_is_refused(certs: Certs, token_file: str) -> None:
    args = ("--tls-cert", certs.rogue_crt, "--tls-key", certs.rogue_key, "--token-file", token_file)
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", *args, host=HOST) as rogue,
        Client(rogue.target, token=TOKEN, tls=ClientTLS(ca=certs.ca), timeout=10) as client,
    ):
        with pytest.raises(KraitError) as err:
            client.execute("add", a=1, b=2)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_plain_text_against_tls_and_tls_against_plain_fail(tls_worker: Worker, certs: Certs) -> None:
    with Client(tls_worker.target, token=TOKEN, timeout=10) as plain:
        with pytest.raises(KraitError) as err:
            plain.execute("add", a=1, b=2)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", host=HOST) as plain_worker,
        Client(plain_worker.target, tls=ClientTLS(ca=certs.ca), timeout=10) as tls,
    ):
        with pytest.raises(KraitError) as err:
            tls.execute("add", a=1, b=2)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(certs: Certs) -> None:
    args = ("--tls-cert", certs.server_crt, "--tls-key", certs.server_key, "--tls-client-ca", certs.ca)
    with running_worker("adapters.showcase:ShowcaseAdapter", *args, host=HOST) as worker:
        mine = ClientTLS(ca=certs.ca, cert=certs.client_crt, key=certs.client_key)
        with Client(worker.target, tls=mine, timeout=10) as client:
            assert client.execute("add", a=1, b=1) == 2
        with Client(worker.target, tls=ClientTLS(ca=certs.ca), timeout=10) as anonymous:
            with pytest.raises(KraitError) as err:
                anonymous.execute("add", a=1, b=1)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE


def _serve_fails(*args: str, env: dict[str, str | None] | None = None) -> str:
    process = spawn("adapters.showcase:ShowcaseAdapter", *args, stderr=subprocess.PIPE, env=env)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 2, stderr
    return stderr.decode()


def test_a_routable_address_without_tls_and_token_is_refused(certs: Certs, token_file: str) -> None:
    # refused before binding anything: 0.0.0.0 is never actually served
    no_token: dict[str, str | None] = {"KRAIT_TOKEN": None}  # without the session's token
    stderr = _serve_fails("--host", "0.0.0.0", env=no_token)
    assert "refusing to serve 0.0.0.0, which is not a loopback address, without TLS" in stderr
    assert "--insecure" in stderr
    tls = ("--tls-cert", certs.server_crt, "--tls-key", certs.server_key)
    # without a token given, serve makes one: only --no-auth leaves TLS alone, which is refused
    stderr = _serve_fails("--host", "0.0.0.0", *tls, "--no-auth", env=no_token)
    assert "without a token" in stderr
    stderr = _serve_fails("--host", "0.0.0.0", "--token-file", token_file)
    assert "without TLS" in stderr
    assert "--tls-cert and --tls-key go together" in _serve_fails("--tls-cert", certs.server_crt)
    assert "cannot read the token file /nonexistent" in _serve_fails("--token-file", "/nonexistent")


def test_the_bind_rule() -> None:
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("worker.example")
    ServerSecurity().check("127.0.0.3")
    ServerSecurity(insecure=True).check("0.0.0.0")
    ServerSecurity(tls_cert="c", tls_key="k", tls_client_ca="ca").check("0.0.0.0")
    with pytest.raises(SecurityConfigError, match="without a token"):
        ServerSecurity(tls_cert="c", tls_key="k").check("10.0.0.1")
    assert "s3cret" not in repr(ServerSecurity(token="s3cret"))  # never in a log line or traceback


def test_the_token_comes_from_the_environment(certs: Certs) -> None:
    env = {"KRAIT_TOKEN": TOKEN}
    with running_worker("adapters.showcase:ShowcaseAdapter", host=HOST, env=env) as worker:
        with Client(worker.target, timeout=10) as anonymous, pytest.raises(UnauthenticatedError):
            anonymous.execute("add", a=1, b=2)
        with Client(worker.target, token=TOKEN, timeout=10) as client:
            assert client.execute("add", a=1, b=2) == 3


def test_cli_security_flags(tls_worker: Worker, certs: Certs, token_file: str) -> None:
    run = [sys.executable, "-m", "python_worker"]
    flags = ["--target", tls_worker.target, "--tls-ca", certs.ca, "--token-file", token_file]
    out = subprocess.run(
        [*run, "call", "add", *flags, "--args", '{"a": 20, "b": 22}'],
        cwd=ROOT, capture_output=True, timeout=30, check=True, text=True,
    )  # fmt: skip
    assert out.stdout.strip() == "42.0"
    tools = subprocess.run([*run, "tools", *flags], cwd=ROOT, capture_output=True, timeout=30, check=True, text=True)
    assert "stream_progress" in tools.stdout
    without_token = {k: v for k, v in os.environ.items() if k != "KRAIT_TOKEN"}
    refused = subprocess.run(
        [*run, "tools", "--target", tls_worker.target, "--tls-ca", certs.ca],
        cwd=ROOT, capture_output=True, timeout=30, text=True, env=without_token,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "error (UNAUTHENTICATED)" in refused.stderr
    # the probe the Kubernetes manifests use: no token, the certificate verified against a name it holds
    health = subprocess.run(
        [*run, "health", "--target", tls_worker.target, "--tls-ca", certs.ca, "--tls-server-name", "localhost"],
        cwd=ROOT, capture_output=True, timeout=30, text=True, env=without_token,
    )  # fmt: skip
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    untrusted = subprocess.run(
        [*run, "health", "--target", tls_worker.target, "--tls-ca", certs.path("otherca"), "--timeout", "2"],
        cwd=ROOT, capture_output=True, timeout=30, text=True, env=without_token,
    )  # fmt: skip
    assert untrusted.returncode == 1 and "error (UNAVAILABLE)" in untrusted.stderr


def test_async_client_token_and_tls(tls_worker: Worker, certs: Certs) -> None:
    import asyncio

    from python_worker.aio_client import AsyncClient

    async def run() -> tuple[Any, list[int], Any]:
        async with AsyncClient(tls_worker.target, token=TOKEN, tls=ClientTLS(ca=certs.ca), timeout=30) as client:
            total = await client.execute("add", a=4, b=5)
            steps = [c.data["step"] async for c in client.execute_stream("stream_progress", steps=2) if not c.is_final]
        refused: Any = None
        async with AsyncClient(tls_worker.target, tls=ClientTLS(ca=certs.ca), timeout=30) as anonymous:
            try:
                await anonymous.execute("add", a=1, b=1)
            except UnauthenticatedError as exc:
                refused = exc
        return total, steps, refused

    total, steps, refused = asyncio.run(asyncio.wait_for(run(), 60))
    assert (total, steps) == (9, [1, 2])
    assert refused is not None and refused.code == grpc.StatusCode.UNAUTHENTICATED
