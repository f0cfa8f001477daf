"""Row 13: MCP beside the HTTP front, on one worker, measured in the same run, interleaved.

- a unary call (``add``): ``tools/call`` over Streamable HTTP (the official ``mcp`` client, one session) vs
  ``POST /v1/tools/add`` (httpx, kept-alive);
- a small stream (``stream_numbers``, ``STREAM_CHUNKS`` chunks): ``tools/call`` with a progress token (every chunk a
  ``notifications/progress``) vs ``POST /v1/tools/stream_numbers/stream`` (SSE), both read to the end.

p50 of each, in ms. The MCP stream includes the front's ``PROGRESS_SETTLE_S`` pause before its result
(``transports/mcp/calls.py``: the TypeScript SDK drops progress read in the same batch as the result).
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import httpx
import httpx2
import numpy as np
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from python_worker.transports.security import TOKEN_ENV
from tests.workers import running_worker

STREAM_CHUNKS = 10


def _sse_stream(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/tools/stream_numbers/stream", json={"count": STREAM_CHUNKS}) as response:
        for _ in response.iter_lines():
            pass


async def _measure(url: str, http: httpx.Client, token: str, samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"mcp_unary": [], "http_unary": [], "mcp_stream": [], "http_stream": []}
    async with (
        httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as client,
        streamable_http_client(url, http_client=client) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        chunks: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            chunks.append(value)

        for i in range(samples + samples // 10):  # the first tenth warms up
            warm = i < samples // 10
            t = time.perf_counter()
            await session.call_tool("add", {"a": 1, "b": 2})
            mcp_unary = time.perf_counter() - t
            t = time.perf_counter()
            http.post("/v1/tools/add", json={"a": 1, "b": 2}).raise_for_status()
            http_unary = time.perf_counter() - t
            chunks.clear()
            t = time.perf_counter()
            await session.call_tool("stream_numbers", {"count": STREAM_CHUNKS}, progress_callback=on_progress)
            mcp_stream = time.perf_counter() - t
            assert len(chunks) == STREAM_CHUNKS
            t = time.perf_counter()
            _sse_stream(http)
            http_stream = time.perf_counter() - t
            if not warm:
                for key, value in zip(times, (mcp_unary, http_unary, mcp_stream, http_stream), strict=True):
                    times[key].append(value * 1000)
    return times


def benchmark(samples: int) -> dict[str, Any]:
    token = os.environ[TOKEN_ENV]
    with running_worker("adapters.showcase:ShowcaseAdapter", "--http-port", "0") as worker:
        base = f"http://127.0.0.1:{worker.info['http_port']}"
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
            times = anyio.run(_measure, f"{base}/mcp", http, token, samples)
    return {f"mcp_{key}_p50_ms": float(np.percentile(values, 50)) for key, values in times.items()}


if __name__ == "__main__":
    import secrets

    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(32))
    print(benchmark(200))
