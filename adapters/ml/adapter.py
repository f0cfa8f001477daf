"""MLAdapter: train a small NumPy network on scikit-learn's bundled digits, streaming one chunk per epoch, and
use the trained model later in the same session.

Chunk schemas of ``train_model``:
- per epoch: ``{"type": "progress", "run_id", "epoch", "epochs", "loss", "accuracy", "val_loss", "val_accuracy",
  "steps", "seconds"}`` (losses: mean cross-entropy in nats per sample; accuracies: fractions 0..1)
- final (explicit, is_final): ``{"type": "complete", "model_id", "kept", "run_id", "epochs", "loss", "accuracy",
  "val_loss", "val_accuracy", "parameters", "train_samples", "val_samples", "seconds", "hyperparameters"}``

Models live in the caller's session (``ctx.session.state``). Without a session the model is trained and
measured but not kept: the final chunk says so (``model_id`` null, ``kept`` false, ``note``).

``train_incremental`` learns a linear model from batches the caller streams (adapters/ml/incremental.py):
- per batch: ``{"type": "progress", "model_id", "batch", "rows", "loss", "seen"}`` (``loss``: the batch's mean
  squared error before the model learnt from it; ``seen``: rows learnt from so far, over every call)
- final (explicit, is_final): ``{"type": "complete", "model_id", "kept", "batches", "seen", "loss", "weights",
  "bias", "features"}``; ``predict_linear`` uses a kept model, and ``model_id=`` trains it further.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from python_worker import BaseAdapter, StreamChunk, ToolContext, tool
from python_worker.sdk import ArgumentError

from . import mlp
from .data import N_CLASSES, load_split
from .incremental import Batch, LinearModel, LinearModels
from .inputs import prediction_inputs
from .metrics import accuracy, confusion_matrix
from .store import RunRecord, SessionModels
from .training import Hyperparameters, Trainer, measure

NOT_KEPT_NOTE = "no session_id: the model was not kept; train with a session_id to use predict/evaluate later"


def _session_models(ctx: ToolContext | None, tool_name: str) -> SessionModels:
    if ctx is None or ctx.session is None:
        raise ValueError(f"{tool_name} needs a session_id: models live in the session that trained them")
    return SessionModels.of(ctx.session)


class MLAdapter(BaseAdapter):
    def setup(self) -> None:
        super().setup()  # cooperative: a composite adapter (adapters.dashboard) inherits several adapters
        load_split()  # import scikit-learn and load the digits once, before the worker reports ready

    @tool(
        description="Train a one-hidden-layer network (hidden=0: softmax regression) on the digits dataset with"
        " momentum SGD; streams one progress chunk per epoch, then a final chunk with the model_id",
        supports_streaming=True,
    )
    def train_model(
        self,
        epochs: int = 10,
        learning_rate: float = 0.05,
        hidden: int = 64,
        batch_size: int = 32,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        seed: int = 0,
        ctx: ToolContext | None = None,
    ) -> Iterator[Any]:
        hp = Hyperparameters(epochs, learning_rate, hidden, batch_size, momentum, weight_decay, seed)
        split = load_split()
        trainer = Trainer(hp, split, should_stop=(lambda: ctx.cancelled) if ctx is not None else (lambda: False))
        store = SessionModels.of(ctx.session) if ctx is not None and ctx.session is not None else None
        record = store.new_run(epochs) if store is not None else RunRecord(run_id="run-unsaved", epochs=epochs)
        record.steps_source = trainer
        started = time.perf_counter()
        try:
            last = None
            for last in trainer.run():
                record.epochs_done = last.epoch
                yield {
                    "type": "progress",
                    "run_id": record.run_id,
                    "epoch": last.epoch,
                    "epochs": epochs,
                    "loss": last.loss,
                    "accuracy": last.accuracy,
                    "val_loss": last.val_loss,
                    "val_accuracy": last.val_accuracy,
                    "steps": last.steps,
                    "seconds": last.seconds,
                }
            if trainer.stopped or last is None:
                record.state = "cancelled"
                return
            metrics = {
                "loss": last.loss,
                "accuracy": last.accuracy,
                "val_loss": last.val_loss,
                "val_accuracy": last.val_accuracy,
            }
            final: dict[str, Any] = {"type": "complete", "model_id": None, "kept": False}
            if store is not None:
                model = store.add(trainer.params, hp.as_dict(), {"epochs": epochs, **metrics})
                final.update(model_id=model.model_id, kept=True)
                record.model_id = model.model_id
            else:
                final["note"] = NOT_KEPT_NOTE
            final.update(
                run_id=record.run_id,
                epochs=epochs,
                **metrics,
                parameters=mlp.parameter_count(trainer.params),
                train_samples=len(split.y_train),
                val_samples=len(split.y_val),
                seconds=time.perf_counter() - started,
                hyperparameters=hp.as_dict(),
            )
            record.state = "complete"
            yield StreamChunk(data=final, is_final=True, metadata={"model_id": final["model_id"] or ""})
        finally:
            # runs on normal end, on error, and when the server closes the generator after a cancel
            record.steps = trainer.steps
            record.steps_source = None
            if record.state == "running":
                record.state = "cancelled" if ctx is not None and ctx.cancelled else "failed"
            record.ended_at = time.time()

    @tool(description="Predict digits with a model of this session: held-out indices and/or rows of 64 pixels (0..16)")
    def predict(
        self,
        model_id: str,
        indices: list[int] | None = None,
        samples: np.ndarray | None = None,
        ctx: ToolContext | None = None,
    ) -> dict[str, Any]:
        model = _session_models(ctx, "predict").get(model_id)
        x, labels = prediction_inputs(load_split(), indices, samples)
        probs = mlp.predict_proba(model.params, x)
        return {
            "model_id": model_id,
            "predictions": probs.argmax(axis=1).tolist(),
            "probabilities": probs.tolist(),
            "labels": labels,
        }

    @tool(description="Accuracy, loss and confusion matrix of a model of this session on the held-out set")
    def evaluate(self, model_id: str, ctx: ToolContext | None = None) -> dict[str, Any]:
        model = _session_models(ctx, "evaluate").get(model_id)
        split = load_split()
        loss, _ = measure(model.params, split.x_val, split.y_val)
        predicted = mlp.predict_proba(model.params, split.x_val).argmax(axis=1)
        matrix = confusion_matrix(predicted, split.y_val, N_CLASSES)
        per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
        return {
            "model_id": model_id,
            "samples": len(split.y_val),
            "accuracy": accuracy(predicted, split.y_val),
            "loss": loss,
            "confusion_matrix": matrix.tolist(),
            "per_class_accuracy": per_class.tolist(),
        }

    @tool(description="The models trained in this session, with their hyperparameters and final metrics")
    def list_models(self, ctx: ToolContext | None = None) -> dict[str, Any]:
        store = _session_models(ctx, "list_models")
        return {"models": [m.summary() for m in store.models()]}

    @tool(description="The training runs of this session (running, complete, cancelled or failed)")
    def training_runs(self, ctx: ToolContext | None = None) -> dict[str, Any]:
        store = _session_models(ctx, "training_runs")
        return {"runs": [r.summary() for r in store.runs()]}

    @tool(description="Forget a model of this session")
    def delete_model(self, model_id: str, ctx: ToolContext | None = None) -> dict[str, Any]:
        store = _session_models(ctx, "delete_model")
        store.delete(model_id)
        return {"deleted": model_id, "models": [m.model_id for m in store.models()]}

    # -- incremental training on the caller's batches ------------------------------------------------------------
    @tool(
        description="Learn a linear model y = x.w + b by SGD from batches the caller streams ({x: rows, y:"
        " targets}); one progress chunk per batch with its loss measured before learning from it; the model is"
        " kept in the session (model_id= trains a kept model further)",
        supports_streaming=True,
    )
    def train_incremental(
        self,
        batches: Iterator[Batch],
        model_id: Annotated[str | None, Field(description="a kept linear model to train further; null = new")] = None,
        learning_rate: Annotated[float, Field(description="SGD step size")] = 0.05,
        l2: Annotated[float, Field(description="L2 penalty on the weights")] = 0.0,
        steps: Annotated[int, Field(description="gradient steps per batch")] = 1,
        ctx: ToolContext | None = None,
    ) -> Iterator[Any]:
        if not 0 < learning_rate <= 10:
            raise ArgumentError(f"learning_rate must be > 0 and <= 10, got {learning_rate}")
        if not 0 <= l2 <= 1000:
            raise ArgumentError(f"l2 must be between 0 and 1000, got {l2}")
        if not 1 <= steps <= 1000:
            raise ArgumentError(f"steps must be between 1 and 1000, got {steps}")
        store = LinearModels.of(ctx.session) if ctx is not None and ctx.session is not None else None
        if model_id is not None:
            if store is None:
                raise ArgumentError("model_id needs a session_id: linear models live in the session that trained them")
            model = store.get(model_id)
        else:
            model = store.new() if store is not None else LinearModel("linear-unsaved")
        with model.lock:
            yield from self._learn(model, batches, learning_rate, l2, steps, kept=store is not None, ctx=ctx)

    def _learn(
        self,
        model: LinearModel,
        batches: Iterator[Batch],
        learning_rate: float,
        l2: float,
        steps: int,
        *,
        kept: bool,
        ctx: ToolContext | None,
    ) -> Iterator[Any]:
        loss: float | None = None
        for index, batch in enumerate(batches):
            problem = model.check(batch)
            if problem is not None:
                raise ArgumentError(f"train_incremental: input item {index}: {problem}")
            loss = model.learn(batch, learning_rate, l2, steps)
            yield {
                "type": "progress",
                "model_id": model.model_id if kept else None,
                "batch": index,
                "rows": len(batch.y),
                "loss": loss,
                "seen": model.seen,
            }
            if ctx is not None and ctx.cancelled:
                return
        final: dict[str, Any] = {"type": "complete", "kept": kept, "loss": loss, **model.summary()}
        if not kept:
            final.update(model_id=None, note=NOT_KEPT_NOTE)
        yield StreamChunk(data=final, is_final=True, metadata={"model_id": final["model_id"] or ""})

    @tool(description="Predict y = x.w + b with a linear model of this session (train_incremental)")
    def predict_linear(self, model_id: str, x: list[list[float]], ctx: ToolContext | None = None) -> dict[str, Any]:
        if ctx is None or ctx.session is None:
            raise ArgumentError("predict_linear needs a session_id: models live in the session that trained them")
        model = LinearModels.of(ctx.session).get(model_id)
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != model.features:
            raise ArgumentError(f"x must be rows of {model.features} features, got shape {list(rows.shape)}")
        return {"model_id": model_id, "predictions": model.predict(rows).tolist()}
