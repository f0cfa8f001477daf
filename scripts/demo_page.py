"""The live page part of ``scripts/demo``: a worker serving every bundled tool (adapters.dashboard) over HTTP,
the URL of its page, and a short stream over Server-Sent Events to show the same data without a browser.

On a terminal it keeps serving the page until Enter or Ctrl-C; otherwise (CI, a pipe) it stops by itself once the
page and a stream have been checked. ``KRAIT_HTTP_PORT`` fixes the port (default: a free one).

The worker needs a token (``$KRAIT_TOKEN``, else a new one): the page's URL carries it in its fragment
(``/#token=...``), which the browser never sends to the worker; the page logs in with it and takes it out of the
address bar, as Jupyter's URLs do. The SSE example sends it as a bearer.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from python_worker.transports.security import generate_token  # noqa: E402
from tests.workers import running_worker  # noqa: E402

ADAPTER = "adapters.dashboard:DashboardAdapter"


def bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


def sse_events(url: str, token: str, timeout: float = 60.0) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a Server-Sent Events response, read to its end."""
    events: list[tuple[str, dict]] = []
    event = ""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    return events


def main() -> int:
    port = os.environ.get("KRAIT_HTTP_PORT", "0")
    print(bold(f"\n== The live page: {ADAPTER} served over HTTP"))
    log = tempfile.NamedTemporaryFile(prefix="krait-demo-page-", suffix=".log", delete=False)  # noqa: SIM115
    args = ("--http-port", port, "--worker-id", "demo-page")
    token = os.environ.get("KRAIT_TOKEN", "").strip() or generate_token()
    with running_worker(ADAPTER, *args, stderr=log, env={"KRAIT_TOKEN": token}) as worker:
        base = f"http://127.0.0.1:{worker.info['http_port']}"
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert b"<title>Krait" in response.read(), "the worker did not serve its page"
        print(f"  page:  {bold(f'{base}/#token={token}')}   (worker pid {worker.info['pid']}, log {log.name})")
        print('  Open it and press "Start all" (or pick a tool and its arguments): a training run draws its loss')
        print("  and accuracy per epoch, a swept sine its spectrum, level meter, pitch and spectrogram, the simulated")
        print("  lab its instrument table, each as the stream runs; Stop cancels a stream in the worker.")

        query = urllib.parse.urlencode({"args": json.dumps({"epochs": 3, "hidden": 16})})
        url = f"{base}/v1/tools/train_model/stream?{query}"
        print("\n  The same stream without a browser (Server-Sent Events):")
        print(f"    curl -N -H 'Authorization: Bearer {token}' '{url}'")
        for event, data in sse_events(url, token):
            if event == "error":
                print(f"    error: {data['error']['code']}: {data['error']['message']}")
                return 1
            chunk = data["data"]
            if chunk.get("type") == "progress":
                epoch = f"{chunk['epoch']}/{chunk['epochs']}"
                print(f"    event: {event}  epoch {epoch}  val_accuracy {chunk['val_accuracy']:.3f}")
            else:
                print(
                    f"    event: {event}  {chunk['type']}: {chunk['parameters']} parameters, {chunk['seconds']:.2f} s"
                )

        if sys.stdin.isatty() and sys.stdout.isatty():
            try:
                input(f"\n  Serving {base}/ — press Enter (or Ctrl-C) to stop the worker. ")
            except (KeyboardInterrupt, EOFError):
                print()
        else:
            print("\n  (not on a terminal: stopping the worker now; run scripts/demo on a terminal to keep the page)")
    print("  worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
