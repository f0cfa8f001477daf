"""adapters.ml: the NumPy kernels against formulas and finite differences, then real training through a real
worker: progress per epoch as it trains, honest held-out numbers, models per session, cancellation."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from adapters.ml import mlp
from adapters.ml.data import holdout_raw, load_split
from adapters.ml.metrics import confusion_matrix
from adapters.ml.training import Hyperparameters, Trainer
from python_worker.client import Client, KraitError

from ..support import eventually
from ..workers import Worker, running_worker

PROMPT = 2.0  # "promptly": cancellation bounds, not speed targets


# -- kernels ----------------------------------------------------------------------------------------------------
def test_softmax_rows_sum_to_one_and_survive_huge_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    p = mlp.softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(p[0], e / e.sum())
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-300)


def test_cross_entropy_of_equal_logits_is_log_k() -> None:
    probs = mlp.softmax(np.zeros((4, 10)))
    assert mlp.cross_entropy(probs, np.array([0, 3, 7, 9])) == pytest.approx(math.log(10))


@pytest.mark.parametrize("hidden", [0, 5])
def test_gradients_match_finite_differences(hidden: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((6, 4))
    y = np.array([0, 1, 2, 1, 0, 2])
    params = mlp.init_params(4, hidden, 3, rng)
    for p in params.values():
        p += rng.normal(0, 0.1, p.shape)  # nonzero biases, so their gradients are exercised too
    _, grads = mlp.loss_and_grads(params, x, y, weight_decay=0.01)
    eps = 1e-6
    for name, p in params.items():
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + eps
            up, _ = mlp.loss_and_grads(params, x, y, weight_decay=0.01)
            p[i] = saved - eps
            down, _ = mlp.loss_and_grads(params, x, y, weight_decay=0.01)
            p[i] = saved
            numeric[i] = (up - down) / (2 * eps)  # central difference: error O(eps^2)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_momentum_sgd_follows_its_formula() -> None:
    params = {"w": np.array([1.0, -1.0])}
    opt = mlp.MomentumSGD(learning_rate=0.1, momentum=0.5)
    opt.step(params, {"w": np.array([2.0, 4.0])})  # v = -0.1 g = [-0.2, -0.4]
    np.testing.assert_allclose(params["w"], [0.8, -1.4])
    opt.step(params, {"w": np.array([2.0, 4.0])})  # v = 0.5 v - 0.1 g = [-0.3, -0.6]
    np.testing.assert_allclose(params["w"], [0.5, -2.0])


def test_confusion_matrix_counts_truth_by_prediction() -> None:
    truth = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(predicted, truth, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be > 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"learning_rate": math.inf}, "learning_rate must be a finite number > 0"),
        ({"hidden": -1}, "hidden must be between 0"),
        ({"batch_size": 0}, "batch_size must be between 1"),
        ({"batch_size": 5000}, "batch_size must be between 1"),
        ({"momentum": 1.0}, "momentum must be in [0, 1)"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ],
)
def test_bad_hyperparameters_are_named(change: dict, message: str) -> None:
    args = {"epochs": 1, "learning_rate": 0.1, "hidden": 8, "batch_size": 32, "momentum": 0.9, "weight_decay": 0.0}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        Trainer(Hyperparameters(**{**args, **change}, seed=0), load_split())


def test_the_split_is_fixed_and_stratified() -> None:
    split = load_split()
    assert split.x_train.shape == (1437, 64) and split.x_val.shape == (360, 64)
    assert 0.0 <= split.x_val.min() and split.x_val.max() <= 1.0
    assert np.bincount(split.y_val).min() >= 35  # every digit is held out (~36 each)


# -- through a worker ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml_worker() -> Iterator[Worker]:
    with running_worker("adapters.ml:MLAdapter") as w:
        yield w


@pytest.fixture
def client(ml_worker: Worker) -> Iterator[Client]:
    with Client(ml_worker.target, timeout=60) as c:
        yield c


def _session(client: Client) -> Client:
    return client.session(f"ml-{uuid.uuid4().hex[:8]}")


def _runs(session: Client) -> list[dict]:
    return session.execute("training_runs")["runs"]


def test_training_streams_progress_per_epoch_and_learns(client: Client) -> None:
    session = _session(client)
    chunks = list(session.execute_stream("train_model", epochs=6, seed=0))
    progress, final = chunks[:-1], chunks[-1]
    assert [c.data["type"] for c in progress] == ["progress"] * 6
    assert [c.data["epoch"] for c in progress] == [1, 2, 3, 4, 5, 6]
    assert all(c.data["epochs"] == 6 and not c.is_final for c in progress)
    losses = [c.data["loss"] for c in progress]
    assert losses[-1] < 0.5 * losses[0]  # the training loss really falls
    assert progress[-1].data["val_accuracy"] > 0.85  # chance is 0.1
    assert [c.data["steps"] for c in progress] == [45 * e for e in range(1, 7)]  # ceil(1437 / 32) minibatches
    assert final.is_final and final.data["type"] == "complete"
    assert final.data["model_id"] == final.metadata["model_id"] == "model-1" and final.data["kept"] is True
    assert final.data["val_accuracy"] == progress[-1].data["val_accuracy"]
    assert final.data["val_samples"] == 360 and final.data["train_samples"] == 1437
    assert _runs(session)[0]["state"] == "complete"


def test_progress_arrives_while_training_is_still_running(client: Client) -> None:
    session = _session(client)
    with session.stream("train_model", {"epochs": 1000, "hidden": 256, "batch_size": 8}) as stream:
        first = next(stream)
        assert first.data["epoch"] == 1
        runs = _runs(session)
        assert runs[0]["state"] == "running" and runs[0]["epochs_done"] < 1000


def test_the_same_seed_reproduces_a_run_and_another_differs(client: Client) -> None:
    def losses(seed: int) -> list[float]:
        return [c.data["loss"] for c in client.execute_stream("train_model", epochs=2, seed=seed)][:-1]

    assert losses(3) == losses(3)
    assert losses(3) != losses(4)


def test_predict_and_evaluate_use_the_trained_model(client: Client) -> None:
    session = _session(client)
    final = list(session.execute_stream("train_model", epochs=5, hidden=32, seed=1))[-1].data
    model_id = final["model_id"]

    report = session.execute("evaluate", model_id=model_id)
    assert report["accuracy"] == pytest.approx(final["val_accuracy"])
    assert report["loss"] == pytest.approx(final["val_loss"])
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 360
    assert np.trace(matrix) / 360 == pytest.approx(report["accuracy"])

    indices = list(range(40))
    by_index = session.execute("predict", model_id=model_id, indices=indices)
    raw, labels = holdout_raw()
    assert by_index["labels"] == labels[:40].tolist()
    assert np.mean(np.array(by_index["predictions"]) == labels[:40]) > 0.85
    np.testing.assert_allclose(np.array(by_index["probabilities"]).sum(axis=1), 1.0)

    # the same images as raw pixel rows (uint8, as a caller would send them) give the same predictions
    by_pixels = session.execute("predict", model_id=model_id, samples=raw[:40].astype(np.uint8))
    assert by_pixels["predictions"] == by_index["predictions"]
    assert by_pixels["labels"] == [None] * 40

    listed = session.execute("list_models")["models"]
    assert [m["model_id"] for m in listed] == [model_id]
    assert listed[0]["hyperparameters"]["hidden"] == 32 and listed[0]["val_accuracy"] == final["val_accuracy"]


def test_another_session_does_not_see_the_model(client: Client) -> None:
    owner, other = _session(client), _session(client)
    model_id = list(owner.execute_stream("train_model", epochs=1))[-1].data["model_id"]
    with pytest.raises(KraitError, match="unknown model_id 'model-1'; this session has no models"):
        other.execute("evaluate", model_id=model_id)
    assert other.execute("list_models")["models"] == []
    assert owner.execute("evaluate", model_id=model_id)["samples"] == 360


def test_unknown_model_id_names_the_available_ones(client: Client) -> None:
    session = _session(client)
    list(session.execute_stream("train_model", epochs=1))
    list(session.execute_stream("train_model", epochs=1, hidden=0))
    with pytest.raises(KraitError, match="unknown model_id 'model-9'; models in this session: model-1, model-2"):
        session.execute("predict", model_id="model-9", indices=[0])
    assert session.execute("delete_model", model_id="model-1") == {"deleted": "model-1", "models": ["model-2"]}


def test_without_a_session_the_model_is_trained_but_not_kept(client: Client) -> None:
    final = list(client.execute_stream("train_model", epochs=2))[-1]
    assert final.data["kept"] is False and final.data["model_id"] is None
    assert "not kept" in final.data["note"]
    assert final.data["val_accuracy"] > 0.85
    with pytest.raises(KraitError, match="predict needs a session_id"):
        client.execute("predict", model_id="model-1", indices=[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"epochs": 0}, "ValueError: epochs must be > 0"),
        ({"learning_rate": -0.5}, "ValueError: learning_rate must be a finite number > 0"),
        ({"batch_size": 0}, "ValueError: batch_size must be between 1"),
        ({"epochs": "10"}, "argument 'epochs'"),
    ],
)
def test_bad_hyperparameters_fail_the_call(client: Client, args: dict, message: str) -> None:
    with pytest.raises(KraitError, match=message):
        list(client.execute_stream("train_model", **args))


def test_bad_predict_inputs_are_named(client: Client) -> None:
    session = _session(client)
    list(session.execute_stream("train_model", epochs=1))
    with pytest.raises(KraitError, match=r"indices must be in 0\.\.359"):
        session.execute("predict", model_id="model-1", indices=[360])
    with pytest.raises(KraitError, match=r"samples must have shape \(n, 64\)"):
        session.execute("predict", model_id="model-1", samples=np.zeros((2, 63)))
    with pytest.raises(KraitError, match="needs indices"):
        session.execute("predict", model_id="model-1")


def test_cancel_mid_epoch_stops_training_promptly(client: Client) -> None:
    session = _session(client)
    # batch_size 1 with a wide layer: the first epoch alone is 1437 minibatches and takes seconds
    stream = session.stream("train_model", {"epochs": 50, "hidden": 4096, "batch_size": 1})
    eventually(lambda: (runs := _runs(session)) and runs[0]["steps"] > 0, timeout=20, what="training starting")
    cancelled_at = time.time()
    stream.close()  # no chunk was ever read: the tool is between yields, inside epoch 1

    run = eventually(
        lambda: (run := _runs(session)[0])["state"] != "running" and run, timeout=PROMPT + 3, what="the run stopping"
    )
    assert run["state"] == "cancelled"
    assert run["ended_at"] - cancelled_at < PROMPT
    assert run["epochs_done"] == 0 and 0 < run["steps"] < 1437  # stopped between minibatches of epoch 1
    time.sleep(0.2)
    assert _runs(session)[0]["steps"] == run["steps"]  # and stays stopped
    assert session.execute("list_models")["models"] == []  # a cancelled run keeps no model
