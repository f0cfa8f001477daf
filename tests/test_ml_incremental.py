"""train_incremental through a real worker (the Python Client's ``input=``, ExecuteToolDuplex): the loss of a known
linear function falls batch by batch, the model is kept in the session and trains further, and a bad batch
ends the call INVALID_ARGUMENT naming the item."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from python_worker.client import Client, KraitError

from .workers import running_worker

ADAPTER = "adapters.ml:MLAdapter"
W, B = np.array([2.0, -3.0, 0.5]), 1.25  # the function the batches come from
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with running_worker(ADAPTER) as worker, Client(worker.target, timeout=60) as c:
        yield c


def batches(n: int, rows: int = 32, seed: int = 0, noise: float = 0.01) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=(rows, len(W)))
        y = x @ W + B + noise * rng.normal(size=rows)
        yield {"x": x.tolist(), "y": y.tolist()}


def train(client: Client, items: Iterator[Any], session: str | None = None, **args: Any) -> list[Any]:
    return [c.data for c in client.stream("train_incremental", args, input=items, session_id=session)]


def test_the_loss_falls_over_streamed_batches_and_the_model_is_kept() -> None:
    session = f"inc-{uuid.uuid4().hex[:8]}"
    with running_worker(ADAPTER) as worker, Client(worker.target, timeout=60) as client:
        chunks = train(client, batches(60), session, learning_rate=0.05)
        progress, final = chunks[:-1], chunks[-1]
        assert [c["batch"] for c in progress] == list(range(60))
        assert [c["seen"] for c in progress] == [32 * (i + 1) for i in range(60)]
        losses = [c["loss"] for c in progress]
        # measured before each update: the first batch sees a zero model (E[y^2] = |w|^2 + b^2 ~ 14.8)
        assert losses[0] > 5.0
        assert np.mean(losses[-5:]) < 0.01 * np.mean(losses[:5])
        tens = np.mean(np.reshape(losses, (6, 10)), axis=1)
        assert all(tens[1:] < 0.5 * tens[:-1]), tens  # every ten batches at least halve it, down to the noise
        assert final["type"] == "complete" and final["kept"] and final["batches"] == 60 and final["seen"] == 1920
        np.testing.assert_allclose(final["weights"], W, atol=0.05)
        assert final["bias"] == pytest.approx(B, abs=0.05)

        # the session keeps it: predictions, then more batches continue from where it was
        model_id = final["model_id"]
        x = [[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]]
        predicted = client.call("predict_linear", {"model_id": model_id, "x": x}, session_id=session)
        np.testing.assert_allclose(predicted["predictions"], np.array(x) @ W + B, atol=0.1)
        more = train(client, batches(5, seed=1), session, model_id=model_id)
        assert more[0]["loss"] < 0.01 and more[-1]["seen"] == 1920 + 5 * 32 and more[-1]["model_id"] == model_id

        # another session does not see it
        with pytest.raises(KraitError) as info:
            client.call("predict_linear", {"model_id": model_id, "x": x}, session_id=session + "-other")
        assert "unknown linear model_id" in info.value.message


def test_without_a_session_the_model_is_trained_but_not_kept(client: Client) -> None:
    final = train(client, batches(3))[-1]
    assert final["kept"] is False and final["model_id"] is None and final["batches"] == 3


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"x": [[1.0, 2.0, 3.0]], "y": [1.0, 2.0]}, "x has 1 rows but y has 2 values"),
        ({"x": [[1.0, 2.0, 3.0], [1.0]], "y": [1.0, 2.0]}, "x row 1 has 1 features"),
        ({"x": [[1.0, "2", 3.0]], "y": [1.0]}, "['x'][0][1]: Input should be a valid number"),
        ({"x": [[1.0, 2.0, 3.0]], "y": [1.0], "z": 1}, "z"),
        ({"x": [[1.0, 2.0]], "y": [1.0]}, "x rows have 2 features, the model has 3"),
    ],
    ids=["rows-vs-y", "ragged", "string", "unknown-field", "width"],
)
def test_an_invalid_batch_ends_the_call_naming_the_item(client: Client, bad: dict[str, Any], problem: str) -> None:
    items = [*batches(3), bad, *batches(2)]
    with pytest.raises(KraitError) as info:
        train(client, iter(items))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "train_incremental: input item 3: " in info.value.message and problem in info.value.message


def test_bad_options_are_refused_before_any_batch(client: Client) -> None:
    with pytest.raises(KraitError) as info:
        train(client, batches(1), learning_rate=0.0)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "learning_rate" in info.value.message
