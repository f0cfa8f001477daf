from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from python_worker.client import Client

from .workers import Worker, running_worker

# Every worker a test starts serves with a token, as `serve` does by default, and every client sends it: the
# token travels as a deployment passes it (the environment). Tests of the token's absence remove it themselves.
os.environ.setdefault("KRAIT_TOKEN", secrets.token_urlsafe(32))


@pytest.fixture(scope="session")
def worker() -> Iterator[Worker]:
    """One showcase worker shared by the tests that only call tools on it."""
    with running_worker("adapters.showcase:ShowcaseAdapter", "--worker-id", "test-worker") as w:
        yield w


@pytest.fixture
def client(worker: Worker) -> Iterator[Client]:
    with Client(worker.target, timeout=30) as c:
        yield c
