from __future__ import annotations

from collections.abc import Iterator

import pytest

from python_worker.client import Client

from .workers import Worker, running_worker


@pytest.fixture(scope="session")
def worker() -> Iterator[Worker]:
    """One showcase worker shared by the tests that only call tools on it."""
    with running_worker("adapters.showcase:ShowcaseAdapter", "--worker-id", "test-worker") as w:
        yield w


@pytest.fixture
def client(worker: Worker) -> Iterator[Client]:
    with Client(worker.target, timeout=30) as c:
        yield c
