"""Command line: ``serve`` a worker, list its ``tools``, ``call`` a tool, check its ``health`` (``krait-worker`` is
the same command).

python -m python_worker serve --adapter adapters.showcase:ShowcaseAdapter --port 0
python -m python_worker tools --target 127.0.0.1:50051
python -m python_worker serve --adapter ... --host 0.0.0.0 --tls-cert tls.crt --tls-key tls.key --token-file token
python -m python_worker tools --target worker:50051 --tls-ca ca.crt --token-file token
python -m python_worker health --target worker:50051 --tls-ca ca.crt
python -m python_worker call stream_progress --target 127.0.0.1:50051 --args '{"steps": 3}' --stream
python -m python_worker serve --adapter adapters.showcase:ShowcaseAdapter --http-port 8080  # then open the page
python -m python_worker serve --adapter adapters.showcase:ShowcaseAdapter --mcp  # MCP on stdin/stdout, for an agent

A served TCP port (gRPC, HTTP, metrics) needs a credential: without a token (--token-file, $KRAIT_TOKEN,
$KRAIT_TOKEN_FILE) or a client CA, ``serve`` makes one and announces it (the ready file, the KRAIT_READY line, the
page's URL); ``--no-auth`` serves without any, explicitly. Clients read --token-file, else $KRAIT_TOKEN, else the
file $KRAIT_TOKEN_FILE names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np


def _serve(ns: argparse.Namespace) -> int:
    from .logs import configure
    from .transports.security import SecurityConfigError, ServerSecurity, client_token
    from .worker.serve import ServeOptions, serve

    # adapters are imported from the current directory first, as `python -m` does (the krait-worker script's
    # own sys.path starts at its bin directory)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    worker_id = ns.worker_id or f"worker-{os.getpid()}"
    link = None
    mcp_stdio = None
    if ns.mcp and ns.link:
        print("serve: --mcp and --link both want stdin/stdout: choose one", file=sys.stderr)
        return 2
    if ns.mcp:
        try:
            from .transports.mcp.stdio import claim_stdio
        except ImportError as exc:
            print(f"serve: --mcp needs the mcp extra (pip install 'krait[mcp]'): {exc}", file=sys.stderr)
            return 2
        mcp_stdio = claim_stdio()  # first: from here on stdout is MCP's, and anything printed goes to stderr
    if ns.link:
        from .transports.link_io import LogFrameHandler, open_link

        link = open_link()  # first: nothing may write to stdout but the link from here on
        configure(log_format="link", level=ns.log_level, worker_id=worker_id, handler=LogFrameHandler(link))
    else:
        configure(log_format=ns.log_format, level=ns.log_level, worker_id=worker_id)
    auto = {"auto": None, "on": True, "off": False}
    try:
        # as clients read it; with --no-auth, any token found is refused by ServerSecurity.check (they contradict)
        token = client_token(None, ns.token_file)
    except SecurityConfigError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    security = ServerSecurity(
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        tls_client_ca=ns.tls_client_ca,
        token=token,
        insecure=ns.insecure,
        no_auth=ns.no_auth,
        allowed_hosts=ns.allowed_hosts,
    )
    options = ServeOptions(
        adapter=ns.adapter,
        host=ns.host,
        port=ns.port if ns.port is not None or ns.link or ns.mcp else 0,
        worker_id=worker_id,
        ready_file=ns.ready_file,
        max_message_bytes=int(ns.max_message_mb * (1 << 20)),
        max_calls=ns.max_calls,
        session_ttl=ns.session_ttl,
        max_sessions=ns.max_sessions,
        stdin_watch=auto[ns.stdin_watch],
        process_group=auto[ns.process_group],
        grace=ns.grace,
        security=security,
        metrics_port=ns.metrics_port,
        metrics=not ns.no_metrics,
        http_port=ns.http_port,
        max_json_bytes=int(ns.max_json_mb * (1 << 20)),
        http_receipt_timeout=ns.http_receipt_timeout,
    )
    return serve(options, link=link, mcp_stdio=mcp_stdio)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def _host_list(text: str) -> tuple[str, ...]:
    """``--allowed-hosts a,b``: lower-case names, none empty."""
    names = tuple(name.strip().lower() for name in text.split(","))
    if not all(names) or any(" " in name or "/" in name for name in names):
        raise argparse.ArgumentTypeError(f"expected host names separated by commas (or '*'), got {text!r}")
    return names


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return json.dumps({"ndarray": {"dtype": str(value.dtype), "shape": list(value.shape)}})
    if isinstance(value, bytes):
        return json.dumps({"bytes": len(value)})
    if hasattr(value, "columns") and hasattr(value, "shape"):  # a DataFrame (from an Arrow payload)
        return json.dumps({"dataframe": {"shape": list(value.shape), "columns": [str(c) for c in value.columns]}})
    return json.dumps(value)


def _client(ns: argparse.Namespace, **kw: Any) -> Any:
    """A Client for ``--target`` with the security flags; exits with 2 naming an unusable one."""
    from .client import Client
    from .transports.grpc.security import ClientTLS
    from .transports.security import SecurityConfigError

    try:
        tls = ClientTLS(ca=ns.tls_ca, cert=ns.tls_cert, key=ns.tls_key, server_name=ns.tls_server_name)
        secure = bool(ns.tls or ns.tls_ca or ns.tls_cert or ns.tls_server_name)
        # the token: --token-file, else $KRAIT_TOKEN, else the file $KRAIT_TOKEN_FILE names (client_token)
        return Client(ns.target, token_file=ns.token_file, tls=tls if secure else None, **kw)
    except SecurityConfigError as exc:
        print(f"{ns.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _tools(ns: argparse.Namespace) -> int:
    import grpc

    with _client(ns) as client:
        try:
            tools = client.list_tools()
        except grpc.RpcError as exc:
            print(f"error ({exc.code().name}): {exc.details()}", file=sys.stderr)
            return 1
        for info in tools:
            kind = "stream" if info.supports_streaming else "unary "
            params = json.loads(info.parameters_schema_json).get("properties", {})
            signature = ", ".join(
                f"{name}: {p.get('type', 'any')}" + (f" = {json.dumps(p['default'])}" if "default" in p else "")
                for name, p in params.items()
            )
            if info.input_param:  # the tool's input stream: `call --input`
                item = json.loads(info.input_schema_json or "{}")
                shown = "binary" if item.get("x-krait-binary") else item.get("type", "any")
                signature = ", ".join(filter(None, (f"{info.input_param}: stream of {shown}", signature)))
            print(f"{kind}  {info.name}({signature})  {info.description}")
    return 0


def _call(ns: argparse.Namespace) -> int:
    from .client import KraitError

    try:
        args = json.loads(ns.args)
    except json.JSONDecodeError as exc:
        print(f"--args is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if ns.input is not None:
        try:
            source = sys.stdin if ns.input == "-" else open(ns.input, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            print(f"--input: {exc.strerror}: {ns.input}", file=sys.stderr)
            return 2
    with _client(ns, timeout=ns.timeout, session_id=ns.session or "") as client:
        items = _json_lines(source) if ns.input is not None else None
        try:
            if ns.stream:
                with client.stream(ns.tool, args, input=items) as chunks:
                    for chunk in chunks:
                        meta = f"  {json.dumps(chunk.metadata)}" if chunk.metadata else ""
                        final = " final" if chunk.is_final else ""
                        print(f"[{chunk.seq}{final}] {_show(chunk.data)}{meta}", flush=True)
            else:
                print(_show(client.call(ns.tool, args, input=items)))
        except _BadLine as exc:
            print(f"--input: {exc}", file=sys.stderr)
            return 2
        except KraitError as exc:
            message = exc.message
            if exc.type == "WrongRpc" and "reads an input stream" in message:
                message = (
                    f"WrongRpc: {ns.tool} reads an input stream: give it with --input FILE (JSON lines, - for stdin)"
                )
            elif exc.type == "WrongRpc":  # the client's own words name Python methods: here it is a flag
                message = f"WrongRpc: {ns.tool} is {'not ' if ns.stream else ''}a streaming tool: " + (
                    "call it without --stream" if ns.stream else "call it with --stream"
                )
            print(f"error ({exc.code.name}): {message}", file=sys.stderr)
            if exc.details:
                print(f"details: {json.dumps(exc.details)}", file=sys.stderr)
            if exc.traceback and ns.verbose:
                print(exc.traceback, file=sys.stderr)
            return 1
    return 0


class _BadLine(ValueError):
    """A line of ``--input`` that is not JSON."""


def _json_lines(source: Any) -> Iterator[Any]:
    """``--input``: one JSON value per non-empty line, read as the tool takes them."""
    with source:
        for number, line in enumerate(source, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _BadLine(f"line {number} is not JSON: {exc}") from None


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file",
        help="file holding the worker's token (default: $KRAIT_TOKEN, else the file $KRAIT_TOKEN_FILE names)",
    )
    parser.add_argument("--tls", action="store_true", help="connect over TLS, verifying with the system's CA roots")
    parser.add_argument("--tls-ca", help="PEM CA file that signed the worker's certificate (implies --tls)")
    parser.add_argument("--tls-cert", help="PEM client certificate for mutual TLS, with --tls-key")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-server-name", help="host name to verify in the worker's certificate (default: the target's)"
    )


def _health(ns: argparse.Namespace) -> int:
    """grpc.health.v1 Check (no token needed): 0 when SERVING, 1 otherwise (a probe's answer)."""
    import grpc

    with _client(ns) as client:
        try:
            status = client.health(ns.service, timeout=ns.timeout)
        except grpc.RpcError as exc:
            print(f"error ({exc.code().name}): {exc.details()}", file=sys.stderr)
            return 1
    print(status)
    return 0 if status == "SERVING" else 1


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the deployment manifests' commands are checked against it)."""
    from .transports.http.defaults import MAX_JSON_BYTES, RECEIPT_TIMEOUT_S

    prog = "krait-worker" if os.path.basename(sys.argv[0]) == "krait-worker" else "python -m python_worker"
    parser = argparse.ArgumentParser(prog=prog, description="Krait Python worker")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve an adapter's tools over gRPC")
    serve.add_argument("--adapter", required=True, help="module:Class, e.g. adapters.showcase:ShowcaseAdapter")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help="gRPC port to bind; 0 picks a free one (the default, unless --link: then gRPC only with --port)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at /metrics on this port (0 picks a free one; announced as metrics_port)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="serve the HTTP front (JSON calls, Server-Sent Events, WebSocket, the live page; docs/http.md) on this "
        "port (0 picks a free one; announced as http_port); same --host, TLS and token as gRPC",
    )
    serve.add_argument(
        "--max-json-mb",
        type=_positive(float),
        default=MAX_JSON_BYTES / (1 << 20),
        help=f"largest JSON body or WebSocket frame the HTTP front reads (default {MAX_JSON_BYTES >> 20}); larger is "
        "413. Parsing JSON takes many times its size in memory: raise it with the machine in mind",
    )
    serve.add_argument(
        "--http-receipt-timeout",
        type=_positive(float),
        default=RECEIPT_TIMEOUT_S,
        help=f"seconds an HTTP connection has to send a complete request head, its TLS handshake included (default "
        f"{RECEIPT_TIMEOUT_S:g}); slower ones are closed",
    )
    serve.add_argument(
        "--no-metrics",
        action="store_true",
        help="count nothing (the benchmarks' baseline; the Metrics call then answers empty)",
    )
    serve.add_argument(
        "--link",
        action="store_true",
        help="serve the local link on stdin/stdout (what a Krait pool uses; see docs/link.md)",
    )
    serve.add_argument(
        "--mcp",
        action="store_true",
        help="serve MCP (the Model Context Protocol) on stdin/stdout, for an agent host that launches the worker "
        "(docs/mcp.md): stdout carries only the protocol, logs go to stderr; gRPC only with --port",
    )
    serve.add_argument("--worker-id", default="", help="id reported in final-chunk metadata (default worker-PID)")
    serve.add_argument(
        "--ready-file",
        help="write the readiness JSON (port, pid, worker_id, and the token when one was made) here once serving; "
        "mode 0600, replaced atomically, never written through a symlink",
    )
    serve.add_argument("--max-message-mb", type=float, default=64, help="max gRPC message size (default 64)")
    serve.add_argument(
        "--max-calls", type=_positive(int), default=32, help="concurrent tool calls allowed (default 32)"
    )
    serve.add_argument(
        "--session-ttl", type=_positive(float), default=3600, help="idle seconds before a session expires"
    )
    serve.add_argument(
        "--max-sessions",
        type=_positive(int),
        default=10_000,
        help="sessions kept at once; a new one beyond evicts the least recently used idle one (default 10000)",
    )
    serve.add_argument(
        "--stdin-watch",
        choices=("auto", "on", "off"),
        default="auto",
        help="exit when stdin closes (auto: when stdin is a pipe, as under a supervisor)",
    )
    serve.add_argument(
        "--process-group",
        choices=("auto", "on", "off"),
        default="auto",
        help="lead a process group of its own, stopped with the worker (auto: when stdin is watched)",
    )
    serve.add_argument(
        "--grace",
        type=_positive(float),
        default=2.0,
        help="seconds from SIGTERM or stdin closing to exit, whatever the tools are doing (default 2)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate (chain) to serve gRPC (and HTTP) over TLS, with --tls-key")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="PEM CA file: clients must present a certificate it signed (mutual TLS)")
    serve.add_argument(
        "--token-file",
        help="file holding the token every call but health checks must carry as 'authorization: Bearer <token>' "
        "(default: $KRAIT_TOKEN, else the file $KRAIT_TOKEN_FILE names; else, when a TCP port is served, a new "
        "one, announced in the ready file and the KRAIT_READY line)",
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve gRPC, HTTP and metrics without any credential: any local user may call every tool",
    )
    serve.add_argument(
        "--allowed-hosts",
        type=_host_list,
        default=(),
        metavar="NAME,NAME",
        help="the names an HTTP request's Host header may carry ('*': any); default: any with a token or client "
        "CA, else loopback names only",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback --host without TLS and a token (or client CA); refused otherwise",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text for a terminal; json: one 'KRAIT_LOG {...}' line per record, for a supervisor",
    )
    serve.set_defaults(func=_serve)

    tools = sub.add_parser("tools", help="list a worker's tools")
    tools.add_argument("--target", required=True, help="HOST:PORT of the worker")
    _client_flags(tools)
    tools.set_defaults(func=_tools)

    call = sub.add_parser("call", help="call a tool")
    call.add_argument("tool")
    call.add_argument("--target", required=True, help="HOST:PORT of the worker")
    call.add_argument("--args", default="{}", help="arguments as a JSON object")
    call.add_argument("--stream", action="store_true", help="the tool streams: print each chunk as it arrives")
    call.add_argument(
        "--input", metavar="FILE", help="the tool's input stream: a file of JSON lines, one item each ('-': stdin)"
    )
    call.add_argument("--session", help="session id")
    call.add_argument("--timeout", type=float, help="deadline in seconds")
    call.add_argument("-v", "--verbose", action="store_true", help="print the remote traceback on errors")
    _client_flags(call)
    call.set_defaults(func=_call)

    health = sub.add_parser("health", help="ask a worker's grpc.health.v1 service (exit 0 when SERVING)")
    health.add_argument("--target", required=True, help="HOST:PORT of the worker")
    health.add_argument("--service", default="", help="service name to ask about (default: the whole worker)")
    health.add_argument("--timeout", type=_positive(float), default=5.0, help="seconds to wait (default 5)")
    _client_flags(health)
    health.set_defaults(func=_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return int(ns.func(ns))
