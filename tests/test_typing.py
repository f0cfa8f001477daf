"""Type checkers see each tool's own signature: ``@tool`` is typed to return what it decorates, and the README's
``*, ctx: ToolContext`` pattern passes ``mypy --strict``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .workers import ROOT

ADAPTER = textwrap.dedent(
    """
    from collections.abc import AsyncIterator, Iterator

    from python_worker import BaseAdapter, StreamChunk, ToolContext, tool


    class Mine(BaseAdapter):
        @tool
        def add(self, a: float, b: float) -> float:
            return a + b

        @tool(description="epochs")
        def train(self, epochs: int = 10, *, ctx: ToolContext) -> Iterator[int | StreamChunk[int]]:
            ctx.sleep(0.1)
            yield epochs
            yield StreamChunk(epochs, is_final=True)

        @tool
        async def ticks(self, n: int, *, ctx: ToolContext) -> AsyncIterator[int]:
            await ctx.async_sleep(0.1)
            yield n


    total: float = Mine().add(1.0, 2.0)
    """
)


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "mine.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "mine.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tools_keep_their_signatures(tmp_path: Path) -> None:
    result = _mypy(tmp_path, ADAPTER)
    assert result.returncode == 0, result.stdout
    result = _mypy(tmp_path, ADAPTER + 'wrong: str = Mine().add("1", 2.0)\n')
    assert result.returncode == 1
    assert 'Argument 1 to "add" of "Mine" has incompatible type "str"; expected "float"' in result.stdout
    assert 'Incompatible types in assignment (expression has type "float", variable has type "str")' in result.stdout
