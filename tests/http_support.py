"""Helpers of the HTTP front's tests: real HTTP clients (httpx) against real workers, and an SSE reader.

Every worker a test starts serves with the session's ``$KRAIT_TOKEN`` (tests/conftest.py), and :func:`http_worker`'s
client sends it as a bearer; :func:`open_worker` starts one without any token, as ``--no-auth`` does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from websockets.sync.client import ClientConnection

from .workers import PYTHON, ROOT, Worker, running_worker


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


def base_url(worker: Worker, scheme: str = "http") -> str:
    return f"{scheme}://{worker.host}:{worker.info['http_port']}"


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of a ``text/event-stream`` response, as they arrive (comment lines skipped)."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    name, data, event_id = "message", [], None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield Event(name, json.loads("\n".join(data)), event_id)
            name, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


def stream_events(client: httpx.Client, tool: str, args: dict[str, Any], **params: Any) -> list[Event]:
    """All the events of a POSTed stream."""
    with client.stream("POST", f"/v1/tools/{tool}/stream", json=args, params=params) as response:
        return list(events(response))


def tool_events(client: httpx.Client, tag: str) -> dict[str, float]:
    """What the showcase adapter recorded about the streams started with ``tag``."""
    response = client.post("/v1/tools/stream_events", json={"tag": tag})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def token() -> str:
    """The token of the workers tests start (conftest.py sets it for the session)."""
    return os.environ["KRAIT_TOKEN"]


def bearer(value: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {value or token()}"}


@functools.cache
def no_auth_args() -> tuple[str, ...]:
    """How to start a worker without any token: ``--no-auth`` where serve has it (serve then makes a token when
    none is given), else nothing (an empty $KRAIT_TOKEN is no token)."""
    result = subprocess.run([PYTHON, "-m", "python_worker", "serve", "--help"], cwd=ROOT, capture_output=True)
    return ("--no-auth",) if b"--no-auth" in result.stdout else ()


@contextlib.contextmanager
def open_worker(*args: str, host: str = "127.0.0.1", **kw: Any) -> Iterator[Worker]:
    """A showcase worker serving HTTP with no token at all."""
    env = {**kw.pop("env", {}), "KRAIT_TOKEN": ""}
    with running_worker(
        "adapters.showcase:ShowcaseAdapter", "--http-port", "0", *no_auth_args(), *args, host=host, env=env, **kw
    ) as worker:
        yield worker


@contextlib.contextmanager
def http_worker(
    *args: str, host: str = "127.0.0.1", auth: bool = True, **kw: Any
) -> Iterator[tuple[Worker, httpx.Client]]:
    """A showcase worker serving HTTP (and gRPC) with ``args``, and an HTTP client of it that sends the worker's
    token (``auth=False``: a client without it)."""
    token_value = kw.get("env", {}).get("KRAIT_TOKEN") or token()
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", "--http-port", "0", *args, host=host, **kw) as worker,
        httpx.Client(base_url=base_url(worker), timeout=30, headers=bearer(token_value) if auth else None) as client,
    ):
        yield worker, client


# -- the WebSocket (/v1/ws) ----------------------------------------------------------------------------------
def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next frame, decoded; a binary frame's array under ``"array"``."""
    frame = ws.recv(timeout=20)
    if isinstance(frame, str):
        return json.loads(frame)
    size = int.from_bytes(frame[:4], "big")
    message = json.loads(frame[4 : 4 + size])
    data = message["chunk"]["data"]
    message["array"] = np.frombuffer(frame[4 + size :], dtype=data["dtype"]).reshape(data["shape"])
    return message


def until_end(ws: ClientConnection, call_id: str) -> list[dict[str, Any]]:
    """The frames of one call up to its last (final, result or error)."""
    frames = []
    while True:
        frame = recv(ws)
        assert frame["id"] == call_id, frame
        frames.append(frame)
        if frame["event"] in ("final", "result", "error"):
            return frames
