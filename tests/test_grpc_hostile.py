"""The gRPC front under hostile traffic, as an attacker on the same machine would send it: calls that send their
headers and never their request message (half-open), without a token and with the right one; token guessing,
alone and from many connections; a refused call's body is never decoded. Real workers, loopback only, bounded.

Half-open calls are written frame by frame (:class:`RawH2`: an HTTP/2 client of a few dozen lines, no HPACK
dynamic table, no Huffman), since a grpc client always sends a unary call's message with its headers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from python_worker.client import Client
from python_worker.proto import pb, pb_grpc
from python_worker.transports.grpc.channel import MAX_CONNECTIONS
from python_worker.transports.grpc.security import ClientTLS
from python_worker.transports.security import PENALTY_S

from .certs import Certs, make_certs
from .support import eventually, token
from .workers import Worker, running_worker

HOST = "127.0.0.2"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
EXECUTE = "/krait.v1.ToolWorker/ExecuteTool"
# one connection's share: the worker allows at least 100 calls per connection (channel.py)
PER_CONNECTION = 100


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header_block(headers: list[tuple[str, str]]) -> bytes:
    """Every header as a literal without indexing, new name, no Huffman (RFC 7541, 6.2.2)."""
    block = bytearray()
    for name, value in headers:
        block += b"\x00" + _hpack_int(len(name), 7) + name.encode() + _hpack_int(len(value), 7) + value.encode()
    return bytes(block)


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class RawH2:
    """One HTTP/2 connection opening gRPC calls with HEADERS only (never DATA: the request message never comes).
    One thread does all of the socket's I/O (an SSL socket must not be read and written from two threads at once):
    it writes what :meth:`open_calls` hands it, acknowledges the server's SETTINGS and PINGs (a peer that does
    not is dropped) and counts the calls the server has ended (trailers or RST_STREAM)."""

    def __init__(self, host: str, port: int, *, ca: str | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=10)
        if ca is not None:
            context = ssl.create_default_context(cafile=ca)
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(1.0)  # a TLS record arriving in parts: the I/O thread waits for the rest, briefly
        self.sock = sock
        self.scheme = "https" if ca else "http"
        self.authority = f"{host}:{port}"
        self.next_id = 1
        self.ended: set[int] = set()
        self.closed = threading.Event()  # the server closed the connection (or GOAWAY)
        self._outbox: queue.Queue[tuple[bytes, threading.Event]] = queue.Queue()
        self._stopping = threading.Event()
        self._received = bytearray()
        # the preface before anything else, the server's SETTINGS acknowledgement included: written here, before
        # the I/O thread starts
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        self._io = threading.Thread(target=self._run, daemon=True)
        self._io.start()

    def open_calls(self, count: int, path: str = EXECUTE, bearer: str | None = None) -> None:
        headers = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if bearer is not None:
            headers.append(("authorization", f"Bearer {bearer}"))
        block = _header_block(headers)
        frames = bytearray()
        for _ in range(count):
            frames += _frame(HEADERS, END_HEADERS, self.next_id, block)  # no END_STREAM: a message should follow
            self.next_id += 2
        self._send(bytes(frames))

    def _send(self, data: bytes) -> None:
        """Hand ``data`` to the I/O thread and wait until it is written (or the connection is gone)."""
        written = threading.Event()
        self._outbox.put((data, written))
        while not written.wait(0.05):
            if self.closed.is_set():
                raise ConnectionError("the connection is closed")

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(queue.Empty):
                    while True:
                        data, written = self._outbox.get_nowait()
                        self.sock.sendall(data)
                        written.set()
                pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
                if not pending and not select.select([self.sock], [], [], 0.02)[0]:
                    continue
                try:
                    part = self.sock.recv(65536)
                except TimeoutError:
                    continue
                if not part:
                    raise ConnectionError("closed")
                self._received += part
                self._frames()
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()

    def _frames(self) -> None:
        while len(self._received) >= 9:
            length = int.from_bytes(self._received[:3], "big")
            if len(self._received) < 9 + length:
                return
            head, payload = bytes(self._received[:9]), bytes(self._received[9 : 9 + length])
            del self._received[: 9 + length]
            kind, flags, stream = head[3], head[4], int.from_bytes(head[5:], "big") & 0x7FFFFFFF
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(_frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(_frame(PING, ACK, 0, payload))
            elif (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM:
                self.ended.add(stream)
            elif kind == GOAWAY:
                self.closed.set()

    def close(self) -> None:
        self._stopping.set()
        self._io.join(5)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_worker(certs: Certs) -> Iterator[Worker]:
    # as docs/deploy.md recommends: TLS and a token (the session's, from the environment)
    args = ("--tls-cert", certs.server_crt, "--tls-key", certs.server_key, "--max-calls", "32")
    with running_worker("adapters.showcase:ShowcaseAdapter", *args, host=HOST) as worker:
        yield worker


def _answers_in(seconds: float, call: concurrent.futures.Future[object]) -> object:
    return call.result(timeout=seconds)


def test_half_open_calls_hold_no_thread_and_no_slot(tls_worker: Worker, certs: Certs) -> None:
    pid = tls_worker.process.pid
    with Client(tls_worker.target, tls=ClientTLS(ca=certs.ca), timeout=10) as client:
        assert client.execute("add", a=1, b=2) == 3  # warm: the executor's first threads exist
        threads_before, rss_before = _threads(pid), _rss_mb(pid)
        attackers = [RawH2(HOST, tls_worker.port, ca=certs.ca) for _ in range(10)]
        insider = RawH2(HOST, tls_worker.port, ca=certs.ca)
        try:
            for connection in attackers:
                connection.open_calls(PER_CONNECTION)  # 1,000 calls without a token, never a message
            insider.open_calls(50, bearer=tls_worker.token or token())  # 50 right-token ones: more than 32 slots
            time.sleep(0.5)  # the worker has read them all
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                started = time.monotonic()
                ping = pool.submit(client.ping, timeout=2.0)
                add = pool.submit(client.call, "add", {"a": 2, "b": 3}, timeout=2.0)
                stream = pool.submit(lambda: len(list(client.stream("stream_progress", {"steps": 3}, timeout=2.0))))
                with grpc.secure_channel(
                    tls_worker.target, grpc.ssl_channel_credentials(Path(certs.ca).read_bytes())
                ) as channel:
                    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                assert _answers_in(2.0, ping).pid == pid  # type: ignore[attr-defined]
                assert _answers_in(2.0, add) == 5
                assert _answers_in(2.0, stream) == 4  # three steps and the final chunk
                assert time.monotonic() - started < 2.0
            # 32 tool calls at once still find their 32 slots: the half-open calls hold none
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                calls = [pool.submit(client.call, "add", {"a": i, "b": 1}, timeout=5.0) for i in range(32)]
                assert [c.result(timeout=10) for c in calls] == [i + 1 for i in range(32)]
            threads_during, rss_during = _threads(pid), _rss_mb(pid)
            # no thread per waiting call (the sync server took one each): 32 for the tool calls above, a few more
            assert threads_during <= threads_before + 40, (threads_before, threads_during)
            assert not any(c.closed.is_set() for c in [*attackers, insider])  # held, not just dropped
            assert not insider.ended  # the right-token calls still wait for their message
            print(
                f"threads {threads_before} -> {threads_during}; RSS {rss_before:.0f} -> {rss_during:.0f} MB "
                f"with 1,050 half-open calls"
            )
        finally:
            for connection in [*attackers, insider]:
                connection.close()
    # the worker is still whole once they let go
    with Client(tls_worker.target, tls=ClientTLS(ca=certs.ca), timeout=10) as client:
        assert client.ping(timeout=2.0).pid == pid


def _guess(channel: grpc.Channel, guess: str) -> concurrent.futures.Future[tuple[grpc.StatusCode, float]]:
    """A Ping with ``guess`` as its token; resolves to its status code and when it was answered (monotonic)."""
    outcome: concurrent.futures.Future[tuple[grpc.StatusCode, float]] = concurrent.futures.Future()
    call = pb_grpc.ToolWorkerStub(channel).Ping.future(
        pb.PingRequest(), metadata=(("authorization", f"Bearer {guess}"),), timeout=60
    )
    call.add_done_callback(lambda c: outcome.set_result((c.code(), time.monotonic())))
    return outcome


def _own_connection(target: str) -> grpc.Channel:
    # channels of one process share connections unless told not to: each guesser its own
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
def plain_worker() -> Iterator[Worker]:
    with running_worker("adapters.showcase:ShowcaseAdapter") as worker:
        yield worker


def test_guesses_on_one_connection_are_answered_one_per_penalty(plain_worker: Worker) -> None:
    right = plain_worker.token or token()
    with _own_connection(plain_worker.target) as attacker, Client(plain_worker.target, timeout=10) as honest:
        assert honest.ping().pid  # its connection is up
        started = time.monotonic()
        guesses = [_guess(attacker, f"guess-{i}") for i in range(3)]
        time.sleep(0.2)
        lucky = _guess(attacker, right)  # the right token, sent beside wrong ones on the same connection
        # meanwhile another connection's right token is answered at once: no lockout
        for _ in range(3):
            t0 = time.monotonic()
            assert honest.ping(timeout=2.0).pid == plain_worker.process.pid
            assert time.monotonic() - t0 < 0.5
        answered = []
        for guess in guesses:
            code, at = guess.result(timeout=20)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            answered.append(at - started)
        code, at = lucky.result(timeout=20)
        assert code == grpc.StatusCode.OK
        lucky_at = at - started
    answered.sort()  # the calls of one connection reach the worker in any order
    # one guess per penalty: the third is answered no sooner than three penalties in, the right token after it
    assert answered[2] >= 3 * PENALTY_S * 0.95, answered
    assert lucky_at >= answered[2] - 0.05, (answered, lucky_at)


def test_many_guessers_pay_the_schedule_and_the_right_token_still_works_at_once(plain_worker: Worker) -> None:
    target = plain_worker.target
    channels = [_own_connection(target) for _ in range(20)]
    try:
        started = time.monotonic()
        guesses = [_guess(channel, f"guess-{c}-{i}") for c, channel in enumerate(channels) for i in range(5)]
        codes = [g.result(timeout=60)[0] for g in guesses]
        elapsed = time.monotonic() - started
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
        # 100 wrong tokens: at least 5 penalties (5 per connection, one at a time), and the worker-wide rate
        assert elapsed >= max(5 * PENALTY_S, 100 / 32) * 0.95, elapsed
        # the guessers' own connections, and a fresh one, serve the right token at once
        for channel in (channels[0], _own_connection(target)):
            t0 = time.monotonic()
            stub = pb_grpc.ToolWorkerStub(channel)
            stub.Ping(pb.PingRequest(), metadata=(("authorization", f"Bearer {plain_worker.token or token()}"),))
            assert time.monotonic() - t0 < 0.5
    finally:
        for channel in channels:
            channel.close()


def test_a_refusal_names_what_is_needed_and_decodes_nothing(plain_worker: Worker) -> None:
    with _own_connection(plain_worker.target) as channel:
        # a body that is not a valid request (invalid UTF-8 in tool_name): a right token gets INVALID_ARGUMENT
        body = b"\x0a\x02\xff\xfe"
        execute = channel.unary_unary(EXECUTE)
        right = (("authorization", f"Bearer {plain_worker.token or token()}"),)
        with pytest.raises(grpc.RpcError) as valid:
            execute(body, metadata=right, timeout=10)
        assert valid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for metadata in ((("authorization", "Bearer not-the-token"),), ()):
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                execute(body, metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # not decoded: not INVALID_ARGUMENT
            assert time.monotonic() - t0 >= PENALTY_S * 0.95
            details = refused.value.details()
            assert "authorization: Bearer <token>" in details and "not-the-token" not in details
        # an unknown method is refused the same way, without saying whether it exists
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary("/krait.v1.ToolWorker/NoSuchMethod")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_half_open_calls_without_a_token_are_refused_without_their_message(plain_worker: Worker) -> None:
    # the refusal reads no message: a call that never sends one is refused all the same, one per penalty
    connection = RawH2("127.0.0.1", plain_worker.port)
    try:
        started = time.monotonic()
        connection.open_calls(3)
        eventually(lambda: len(connection.ended) == 3, timeout=3 * PENALTY_S + 5, what="3 refusals")
        assert time.monotonic() - started >= 3 * PENALTY_S * 0.95
    finally:
        connection.close()


def test_half_open_right_token_calls_end_with_their_connection(plain_worker: Worker) -> None:
    # a call that never sends its message costs nothing once its client goes
    connection = RawH2("127.0.0.1", plain_worker.port)
    connection.open_calls(20, bearer=plain_worker.token or token())
    time.sleep(0.3)
    connection.close()
    with Client(plain_worker.target, timeout=10) as client:
        eventually(lambda: client.ping(timeout=2.0).pid == plain_worker.process.pid)
        assert client.execute("add", a=1, b=1) == 2


def test_connections_beyond_the_cap_are_closed_and_room_comes_back(plain_worker: Worker) -> None:
    held = [RawH2("127.0.0.1", plain_worker.port) for _ in range(MAX_CONNECTIONS)]
    try:
        eventually(lambda: all(not c.closed.is_set() for c in held) and len(held) == MAX_CONNECTIONS)
        extra = RawH2("127.0.0.1", plain_worker.port)
        try:
            assert extra.closed.wait(5), "a connection beyond the cap was served"
        finally:
            extra.close()
        assert not any(c.closed.is_set() for c in held)
    finally:
        for connection in held:
            connection.close()
    with Client(plain_worker.target, timeout=10) as client:
        eventually(lambda: _pings(client, plain_worker), timeout=10, what="a new connection served")


def _pings(client: Client, worker: Worker) -> bool:
    try:
        return bool(client.ping(timeout=2.0).pid == worker.process.pid)
    except grpc.RpcError:
        return False  # not yet
