"""Online linear regression for ``train_incremental``: one SGD update per batch the caller streams.

The model is ``y ≈ x·w + b``. For each batch (X: n x d, y: n) it first measures the mean squared error

    L = 1/n |X w + b - y|^2    (+ l2/2 |w|^2 in the gradient only)

on the batch *before* learning from it — the prequential (test-then-train) loss: every number is measured on
rows the model has not seen, so a falling loss means the model generalises, not that it memorised — then takes
``steps`` gradient steps on that batch:

    g_w = 2/n X^T (X w + b - y) + l2 w        g_b = 2/n sum(X w + b - y)        w -= lr g_w,  b -= lr g_b

The model's width (d) is fixed by its first batch; a later batch of another width is refused, naming the item.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from python_worker import Session

from .store import UnknownModelError

STATE_KEY = "adapters.ml.linear"


class Batch(BaseModel):
    """Rows ``x`` (n rows of d features) and their targets ``y`` (n numbers)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    x: list[list[float]]
    y: list[float]

    @model_validator(mode="after")
    def _shape(self) -> Batch:
        if not self.x:
            raise ValueError("x has no rows")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)} values")
        width = len(self.x[0])
        if width == 0:
            raise ValueError("x rows have no features")
        for i, row in enumerate(self.x):
            if len(row) != width:
                raise ValueError(f"x row {i} has {len(row)} features, row 0 has {width}")
        return self


@dataclass(slots=True)
class LinearModel:
    """A linear model trained online; ``weights`` is None until the first batch sets the width."""

    model_id: str
    weights: np.ndarray | None = None
    bias: float = 0.0
    seen: int = 0  # rows learnt from, over every call that trained it
    batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one training call at a time

    @property
    def features(self) -> int | None:
        return None if self.weights is None else len(self.weights)

    def check(self, batch: Batch) -> str | None:
        """What is wrong with ``batch`` for this model (its width), or None."""
        width = len(batch.x[0])
        if self.weights is not None and width != len(self.weights):
            return f"x rows have {width} features, the model has {len(self.weights)}"
        return None

    def learn(self, batch: Batch, learning_rate: float, l2: float, steps: int) -> float:
        """Measure the batch's mean squared error, then take ``steps`` SGD steps on it; returns that error."""
        x = np.asarray(batch.x, dtype=np.float64)
        y = np.asarray(batch.y, dtype=np.float64)
        if self.weights is None:
            self.weights = np.zeros(x.shape[1])
        loss = float(np.mean(np.square(x @ self.weights + self.bias - y)))
        n = len(y)
        for _ in range(steps):
            residual = x @ self.weights + self.bias - y
            grad_w = (2.0 / n) * (x.T @ residual) + l2 * self.weights
            grad_b = (2.0 / n) * float(residual.sum())
            self.weights = self.weights - learning_rate * grad_w
            self.bias -= learning_rate * grad_b
        if not (np.all(np.isfinite(self.weights)) and np.isfinite(self.bias)):
            raise ValueError(
                f"training diverged at batch {self.batches} (the weights overflowed): use a smaller learning_rate"
                " or scale the features"
            )
        self.seen += n
        self.batches += 1
        return loss

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.weights is None:
            raise ValueError(f"model {self.model_id!r} has not learnt from any batch yet")
        return x @ self.weights + self.bias

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "features": self.features,
            "weights": None if self.weights is None else self.weights.tolist(),
            "bias": self.bias,
            "seen": self.seen,
            "batches": self.batches,
        }


class LinearModels:
    """The linear models of one session (``session.state[STATE_KEY]``): ``linear-1``, ``linear-2``, ..."""

    def __init__(self) -> None:
        self._models: dict[str, LinearModel] = {}
        self._next_id = 1
        self._lock = threading.Lock()

    @classmethod
    def of(cls, session: Session) -> LinearModels:
        """The session's linear models, created on first use."""
        store = session.state.get(STATE_KEY)
        if store is None:
            store = session.state.setdefault(STATE_KEY, cls())
        return store

    def new(self) -> LinearModel:
        with self._lock:
            model = LinearModel(f"linear-{self._next_id}")
            self._next_id += 1
            self._models[model.model_id] = model
        return model

    def get(self, model_id: str) -> LinearModel:
        with self._lock:
            model = self._models.get(model_id)
            if model is None:
                have = ", ".join(self._models) or "none yet (train_incremental without model_id makes one)"
                raise UnknownModelError(f"unknown linear model_id {model_id!r}; this session's linear models: {have}")
            return model
