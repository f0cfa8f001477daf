"""RecycleAdapter: a test adapter for pool recycling (elixir_client/test/krait/pool/recycle_test.exs).

A recycled worker's memory goes with it, so each session's end is appended to the file named by
``KRAIT_TEST_SESSION_LOG`` (one JSON line: session id, worker id, pid), where the test reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from python_worker import BaseAdapter, Session, ToolContext, tool


class RecycleAdapter(BaseAdapter):
    def setup(self) -> None:
        self._worker_id = ""
        self._ballast: list[bytes] = []

    @tool(description="The worker serving this call, and the session's call count (when in a session)")
    def whoami(self, ctx: ToolContext) -> dict[str, Any]:
        self._worker_id = ctx.worker_id
        count = 0
        if ctx.session is not None:
            count = ctx.session.state.get("count", 0) + 1
            ctx.session.state["count"] = count
        return {"worker_id": ctx.worker_id, "pid": os.getpid(), "count": count}

    @tool(description="Sleep `seconds` (stops early when cancelled), then say who served it")
    def nap(self, seconds: float, ctx: ToolContext) -> dict[str, Any]:
        ctx.sleep(seconds)
        return self.whoami(ctx)

    @tool(description="Keep `mb` MiB more of touched memory for the worker's life")
    def grow(self, mb: int) -> int:
        self._ballast.append(b"\x01" * (mb * 1024 * 1024))
        return sum(len(b) for b in self._ballast) // (1024 * 1024)

    @tool(description="An environment variable of the worker, or None")
    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def on_session_end(self, session: Session) -> None:
        path = os.environ.get("KRAIT_TEST_SESSION_LOG")
        if path:
            line = json.dumps({"session_id": session.session_id, "worker_id": self._worker_id, "pid": os.getpid()})
            with open(path, "a") as f:
                f.write(line + "\n")
