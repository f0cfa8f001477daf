"""Serving a worker: its engine behind the local link (``--link``), the gRPC server (health and reflection
included), or both; readiness; and the ways a worker stops.

A worker stops on SIGTERM/SIGINT, and by itself when its stdin (a pipe from its supervisor, or the link) closes,
so no worker outlives a crashed supervisor; it is gone within its grace either way, with the processes its tools
started (see shutdown.py). Readiness is announced once serving: over the link as a READY frame; otherwise on
stdout as ``KRAIT_READY {"port": ..., "pid": ..., "worker_id": ..., "adapter": ...}``, and in the ready file.
With ``--metrics-port``, the worker's Prometheus metrics are served at ``/metrics`` on that port (announced as
``metrics_port`` in both); with ``--http-port``, the HTTP front (JSON, SSE, WebSocket and the page: see
``docs/http.md``) on that port, announced as ``http_port``.

Secure by default on a shared machine: every TCP listener (gRPC, HTTP, metrics) needs a credential, since any
local user can reach a loopback port. Without a token, a client CA or ``--no-auth``, the worker makes a token
(256 bits) for all of them and announces it as ``token`` beside the ports: in the ready file (mode 0600, written
to a new file made by ``mkstemp`` in the same directory and renamed over the target, so a symlink another user
planted at the target or at any temporary name is never written through), on the KRAIT_READY line (stdout: the
pipe to the process that started the worker, or the operator's terminal) and in the link's READY frame; its log
says where to find it, and with the HTTP front gives the page's URL with the token in the fragment (never sent
to a server, not in any access log), as Jupyter does. The local link itself is the pool's own pipe: no token.

With ``--mcp`` the worker speaks MCP on stdin/stdout (``docs/mcp.md``): stdout is the protocol, so there is no
KRAIT_READY line (the ready file still has the JSON); like the link, the pipe is the host's own: no token, and
gRPC only with ``--port``. The host closing stdin stops the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import tracing
from ..engine import Engine, aio_runner
from ..engine.sessions import DEFAULT_MAX_SESSIONS, SessionStore
from ..metrics import WorkerMetrics, serve_http
from ..proto import pb
from ..sdk import AdapterPathError, BaseAdapter, load_adapter
from ..transports.grpc.server import GrpcServer
from ..transports.http.defaults import MAX_JSON_BYTES, RECEIPT_TIMEOUT_S
from ..transports.link import LinkServer
from ..transports.link_io import READY, FrameReader, FrameWriter
from ..transports.security import SecurityConfigError, ServerSecurity, generate_token
from .shutdown import GROUP_TERM_WAIT_S, Shutdown, exit_now, lead_process_group, stop_group

if TYPE_CHECKING:
    from ..transports.http.server import HttpServer
    from ..transports.mcp.stdio import McpStdio

log = logging.getLogger("krait.worker")

READY_PREFIX = "KRAIT_READY "

# How long a thread may hold the GIL while another waits (CPython's default is 5 ms). grpcio delivers a
# cancellation on its completion-queue thread, which must win the GIL from a busy tool thread and the thread
# sending its chunks; at 5 ms, a cancelled busy generator took up to ~75 ms (p99) to reach its `finally`, at
# 2 ms ~16 ms, with no measurable cost to throughput (1 ms cost ~20% of small-chunk throughput).
SWITCH_INTERVAL_S = 0.002


@dataclass(slots=True)
class ServeOptions:
    adapter: str
    host: str = "127.0.0.1"
    port: int | None = 0  # None: no gRPC (with a link)
    worker_id: str = ""
    ready_file: str | None = None
    max_message_bytes: int = 64 << 20
    max_calls: int = 32
    session_ttl: float = 3600.0
    max_sessions: int = DEFAULT_MAX_SESSIONS
    stdin_watch: bool | None = None  # None: watch when stdin is a pipe or socket
    process_group: bool | None = None  # None: lead a process group when stdin is watched (supervised)
    grace: float = 2.0
    security: ServerSecurity = field(default_factory=ServerSecurity)  # TLS, token, --no-auth: every TCP listener
    metrics_port: int | None = None  # serve /metrics on this port (0: a free one); None: no metrics endpoint
    metrics: bool = True  # count calls (False: nothing counted, the Metrics call answers empty)
    http_port: int | None = None  # serve the HTTP front on this port (0: a free one); None: no HTTP front
    max_json_bytes: int = MAX_JSON_BYTES  # the HTTP front's largest JSON body or WebSocket frame
    http_receipt_timeout: float = RECEIPT_TIMEOUT_S  # an HTTP connection's time to send a request head


def _watch_stdin(shutdown: Shutdown) -> None:
    # os.read on the raw descriptor: a thread blocked in sys.stdin's buffered reader holds its lock and makes
    # interpreter shutdown abort
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    if not shutdown.requested:
        log.info("stdin closed: the supervisor has gone")
    shutdown.request("stdin closed")


def _should_watch_stdin() -> bool:
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _announce(
    options: ServeOptions, port: int | None, extra: dict[str, str], token: str | None, *, stdout: bool = True
) -> None:
    info: dict[str, object] = {"port": port, "pid": os.getpid(), "worker_id": options.worker_id}
    info["adapter"] = options.adapter
    info.update({key: int(value) for key, value in extra.items()})
    if token is not None:
        info["token"] = token
    line = json.dumps(info)
    if options.ready_file:
        write_private(options.ready_file, line + "\n")
    if not stdout:  # stdout is MCP's
        return
    sys.stdout.write(READY_PREFIX + line + "\n")
    sys.stdout.flush()


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically by a file of mode 0600 holding ``text``: written to a new file that ``mkstemp``
    creates (O_EXCL, in the target's directory) and renamed over ``path``. Neither step follows a symlink: another
    user's link at ``path`` is replaced, its target untouched; a reader never sees half a file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp's mode is 0600
            file.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def with_credential(security: ServerSecurity, listens: bool) -> tuple[ServerSecurity, str | None]:
    """``security`` with a token made for it when the worker ``listens`` on TCP without a token, a client CA or
    ``no_auth``; and that new token (None when none was made)."""
    if not listens or security.token or security.tls_client_ca or security.no_auth:
        return security, None
    token = generate_token()
    return replace(security, token=token), token


def serve(options: ServeOptions, link: FrameWriter | None = None, mcp_stdio: tuple[int, int] | None = None) -> int:
    """Run a worker until it is told to stop; returns the process exit code. With ``link`` (the writer of the
    frames to the pool, see :func:`..transports.link_io.open_link`), the worker serves the local link on
    stdin/stdout, and gRPC as well only when ``options.port`` is set; so with ``mcp_stdio`` (stdin and stdout
    claimed by :func:`..transports.mcp.stdio.claim_stdio`), MCP."""
    options.worker_id = options.worker_id or f"worker-{os.getpid()}"
    serves_grpc = (link is None and mcp_stdio is None) or options.port is not None
    listens = serves_grpc or options.http_port is not None or options.metrics_port is not None
    options.security, made_token = with_credential(options.security, listens)
    if listens:
        try:  # before anything starts: a worker that would be exposed, or cannot read its files, never serves
            options.security.check(options.host)
            options.security.tls_files()
        except SecurityConfigError as exc:
            log.error("%s", exc)
            return 2
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    supervised = link is not None or mcp_stdio is not None or _should_watch_stdin()
    # over the link (or MCP), stdin is the protocol: its reader sees the pool (the host) go
    watch_stdin = (
        link is None and mcp_stdio is None and (options.stdin_watch if options.stdin_watch is not None else supervised)
    )
    # before any adapter code runs: whatever it starts is in the group from its first moment
    if options.process_group if options.process_group is not None else supervised:
        lead_process_group()
    shutdown = Shutdown(options.grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: shutdown.request(signal.Signals(signum).name))
    if watch_stdin:
        threading.Thread(target=_watch_stdin, args=(shutdown,), name="stdin-watch", daemon=True).start()

    # before the adapter loads: its own metrics (sdk.metrics) go on the same registry
    metrics = WorkerMetrics() if options.metrics else None
    tracing.configure_from_env()
    adapter = _load(options.adapter)
    sessions = SessionStore(ttl=options.session_ttl, on_end=adapter.on_session_end, max_sessions=options.max_sessions)
    sessions.start_sweeping()
    engine = Engine(
        adapter,
        adapter_path=options.adapter,
        worker_id=options.worker_id,
        sessions=sessions,
        max_calls=options.max_calls,
        max_message_bytes=options.max_message_bytes,
        metrics=metrics,
    )
    metrics_server = None
    metrics_port: int | None = None
    if options.metrics_port is not None and metrics is None:
        log.error("--metrics-port needs the metrics that --no-metrics turns off")
        exit_now(2)
    if options.metrics_port is not None and metrics is not None and not shutdown.requested:
        try:
            metrics_server, metrics_port = serve_http(
                options.metrics_port, options.host, metrics.registry, options.security
            )
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", options.host, options.metrics_port, exc)
            sessions.close()
            stop_group()
            exit_now(1)
    http_server = None
    if options.http_port is not None and not shutdown.requested:
        http_server = _http_server(engine, options, sessions)
    grpc_server = None
    if serves_grpc:

        def cannot_listen() -> None:
            sessions.close()
            stop_group()
            exit_now(1)

        grpc_server = GrpcServer(
            engine,
            host=options.host,
            port=options.port or 0,
            max_calls=options.max_calls,
            max_message_bytes=options.max_message_bytes,
            on_fail=cannot_listen,
            security=options.security,
        )
    mcp_server = None
    if mcp_stdio is not None:
        mcp_server = _mcp_server(engine, options, mcp_stdio)
        threading.Thread(target=_await_mcp_close, args=(mcp_server, shutdown), name="mcp-watch", daemon=True).start()
    link_server = None
    if link is not None:
        # one thread per tool call allowed, one reading, one for a session call or a refusal beside them
        link_server = LinkServer(engine, FrameReader(0), link, threads=options.max_calls + 2)
        threading.Thread(target=_await_link_close, args=(link_server, shutdown), name="link-watch", daemon=True).start()

    if not shutdown.requested:
        port = grpc_server.start() if grpc_server is not None else None
        ports: dict[str, str] = {}  # announced beside the gRPC port
        if metrics_port is not None:
            ports["metrics_port"] = str(metrics_port)
        if http_server is not None:
            try:
                ports["http_port"] = str(http_server.start())
            except RuntimeError as exc:
                log.error("%s", exc)
                sessions.close()
                stop_group()
                exit_now(1)
            log.info("serving HTTP on %s://%s:%s/", http_server.front.scheme, options.host, ports["http_port"])
        if made_token is not None:
            _tell_token(options, made_token, http_server.front.scheme if http_server else None, ports, link, mcp_server)
        if mcp_server is not None:
            mcp_server.start()
            if options.ready_file:
                _announce(options, port, ports, made_token, stdout=False)
            log.info(
                "serving %s over MCP on stdin/stdout%s",
                options.adapter,
                f" and on {options.host}:{port}" if port else "",
            )
        if link_server is not None and link is not None:
            link_server.start()
            metadata = {"grpc_port": str(port)} if port is not None else {}
            metadata |= ports
            if made_token is not None:
                metadata["token"] = made_token
            ready = engine.ping(pb.PingRequest(message="ready"))
            link.send(0, READY, ready.SerializeToString(), metadata=metadata or None)
            log.info("serving %s over the link%s", options.adapter, f" and on {options.host}:{port}" if port else "")
        elif port is not None and mcp_server is None:
            log.info("serving %s on %s:%d (%s)", options.adapter, options.host, port, options.security.describe())
            _announce(options, port, ports, made_token)

    log.info("stopping: %s", shutdown.wait())
    # in-flight calls get half the grace to finish, then they are cancelled (their generators closed, their
    # flags raised); the rest of the grace is for the tools to wind down and the adapter to close
    if http_server is not None:
        http_server.stop(options.grace / 2, shutdown.remaining())
    if mcp_server is not None:
        mcp_server.stop(options.grace / 2, shutdown.remaining())
    if grpc_server is not None:
        grpc_server.stop(options.grace / 2, shutdown.remaining())
    if link_server is not None:
        if not link_server.closed.is_set():  # told to stop by the pool: its calls may finish
            _drain(engine, options.grace / 2, shutdown)
        link_server.cancel_all("the worker is stopping")
    aio_runner.shutdown(min(options.grace / 2, shutdown.remaining()))
    if metrics_server is not None:
        metrics_server.shutdown()
    _close(adapter, sessions)
    stuck = engine.calls_in_flight()
    stop_group(wait=min(GROUP_TERM_WAIT_S, shutdown.remaining()))
    if stuck or link_server is not None:
        # a unary tool deaf to cancellation holds a thread (grpcio's are not daemon threads): returning would
        # wait for it; over the link, the pool has its answer once the pipe closes
        if stuck:
            log.warning("exiting with %d tool call(s) still running: they ignored cancellation", stuck)
        exit_now(0)
    return 0


def _tell_token(
    options: ServeOptions,
    token: str,
    http_scheme: str | None,
    ports: dict[str, str],
    link: FrameWriter | None,
    mcp_server: McpStdio | None = None,
) -> None:
    """Log where the token made for this worker is announced; with the HTTP front, the page's URL carrying it in
    the fragment (the browser keeps it; no server or proxy log sees it)."""
    where = []
    if mcp_server is None:
        where.append("the link's READY frame" if link is not None else "the KRAIT_READY line on stdout")
    if options.ready_file:
        where.append(f"the ready file {options.ready_file}")
    if not where:  # MCP on stdout, no ready file: the log (stderr, the host's) is the only place left
        log.info("no token given (--token-file, $KRAIT_TOKEN): made one for the TCP ports: %s", token)
        where.append("the line above")
    log.info(
        "no token given (--token-file, $KRAIT_TOKEN): made one for the TCP ports; it is in %s. Clients: "
        "KRAIT_TOKEN=<token> or --token-file; --no-auth serves without one",
        " and ".join(where),
    )
    if http_scheme is not None:
        host = options.host if options.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        # in the worker's log (stderr, the operator's terminal), as Jupyter does
        log.info("open the page: %s://%s:%s/#token=%s", http_scheme, host, ports["http_port"], token)


def _http_server(engine: Engine, options: ServeOptions, sessions: SessionStore) -> HttpServer:
    """The HTTP front, bound (not serving yet); a missing library or a port it cannot bind ends the worker."""
    from ..transports.http.server import HttpServer, HttpUnavailable

    assert options.http_port is not None
    try:
        return HttpServer(
            engine,
            host=options.host,
            port=options.http_port,
            security=options.security,
            max_message_bytes=options.max_message_bytes,
            max_json_bytes=options.max_json_bytes,
            receipt_timeout_s=options.http_receipt_timeout,
        )
    except HttpUnavailable as exc:
        log.error("%s", exc)
        code = 2
    except OSError as exc:
        log.error("cannot serve HTTP on %s:%d: %s", options.host, options.http_port, exc.strerror or exc)
        code = 1
    sessions.close()
    stop_group()
    exit_now(code)


def _mcp_server(engine: Engine, options: ServeOptions, fds: tuple[int, int]) -> McpStdio:
    from ..transports.mcp.stdio import McpStdio

    return McpStdio(engine, fds, max_message_bytes=options.max_message_bytes)


def _await_mcp_close(mcp_server: McpStdio, shutdown: Shutdown) -> None:
    mcp_server.closed.wait()
    if not shutdown.requested:
        log.info("MCP's stdin closed: the host has gone")
    shutdown.request("stdin closed")


def _await_link_close(link_server: LinkServer, shutdown: Shutdown) -> None:
    link_server.closed.wait()
    if not shutdown.requested:
        log.info("the link closed: the supervisor has gone")
    shutdown.request("the link closed")


def _drain(engine: Engine, seconds: float, shutdown: Shutdown) -> None:
    """Give the link's calls up to ``seconds`` to finish before they are cancelled."""
    deadline = min(seconds, shutdown.remaining())
    step = 0.01
    while engine.calls_in_flight() and deadline > 0:
        time.sleep(step)
        deadline -= step


def _load(path: str) -> BaseAdapter:
    """The adapter; on failure, one error record naming the adapter and the cause, and a quick exit (1). The
    record carries a traceback only when the failure is in the adapter's own code."""
    try:
        return load_adapter(path)
    except AdapterPathError as exc:
        log.error("cannot load adapter %s: %s", path, exc)
    except Exception as exc:
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))  # what to install, say
        log.error("adapter %s failed to load: %s: %s%s", path, type(exc).__name__, exc, notes, exc_info=exc)
    stop_group()  # whatever its setup started
    exit_now(1)


def _close(adapter: BaseAdapter, sessions: SessionStore) -> None:
    sessions.close()
    try:
        adapter.close()
    except Exception:
        log.exception("adapter close() failed")
