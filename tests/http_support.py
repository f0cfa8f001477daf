"""Helpers of the HTTP front's tests: real HTTP clients (httpx) against real workers, and an SSE reader."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from .workers import Worker, running_worker


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


@contextlib.contextmanager
def http_worker(*args: str, host: str = "127.0.0.1", **kw: Any) -> Iterator[tuple[Worker, httpx.Client]]:
    """A showcase worker serving HTTP (and gRPC) with ``args``, and an HTTP client of it."""
    with (
        running_worker("adapters.showcase:ShowcaseAdapter", "--http-port", "0", *args, host=host, **kw) as worker,
        httpx.Client(base_url=base_url(worker), timeout=30) as client,
    ):
        yield worker, client
