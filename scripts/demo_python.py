"""Krait's demo through the Python client: start a worker, stream the showcase tools with live output.

Run by ``scripts/demo --python``; ``scripts/demo`` runs the same story through the Elixir pool.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from python_worker.client import Client, KraitError  # noqa: E402
from tests.workers import running_worker  # noqa: E402


def bar(fraction: float, width: int = 30) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


def main() -> int:
    print("starting a worker: python -m python_worker serve --adapter adapters.showcase:ShowcaseAdapter --port 0")
    log = tempfile.NamedTemporaryFile(prefix="krait-demo-worker-", suffix=".log", delete=False)  # noqa: SIM115
    print(f"(the worker logs to {log.name})")
    with running_worker("adapters.showcase:ShowcaseAdapter", "--worker-id", "demo-1", stderr=log) as worker:
        print(f"worker ready on {worker.target} (pid {worker.info['pid']})\n")
        with Client(worker.target, token=worker.token, timeout=60) as client:
            print("stream_progress(steps=20), one chunk every 100 ms:")
            for chunk in client.execute_stream("stream_progress", steps=20, delay_ms=100):
                if chunk.is_final:
                    print(f"\n  final chunk metadata: {chunk.metadata}")
                else:
                    sys.stdout.write(f"\r  {bar(chunk.data['progress'] / 100)}  step {chunk.data['step']}/20")
                    sys.stdout.flush()

            print("\nstream_items(count=3), explicit final chunk:")
            for chunk in client.execute_stream("stream_items", count=3):
                print(f"  seq={chunk.seq} final={chunk.is_final} data={chunk.data}")

            started = time.perf_counter()
            count = sum(1 for _ in client.execute_stream("stream_small", count=100_000))
            elapsed = time.perf_counter() - started
            print(f"\nstream_small(count=100000): {count} chunks in {elapsed:.2f} s ({count / elapsed:,.0f}/s)")

            print("\nendless_stream, cancelled after 5 ticks:")
            with client.execute_stream("endless_stream", interval_ms=100) as stream:
                for chunk in stream:
                    print(f"  tick {chunk.data['tick']}")
                    if chunk.data["tick"] == 4:
                        break
            print("  cancelled (the generator's finally ran on the worker)")

            print("\nfailing_stream: a Python exception reaches the caller")
            try:
                for chunk in client.execute_stream("failing_stream", fail_at=2):
                    print(f"  {chunk.data}")
            except KraitError as exc:
                print(f"  error: {exc}  (type={exc.type})")

            print(f"\nunary add(a=2, b=40) = {client.execute('add', a=2, b=40)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.SubprocessError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
