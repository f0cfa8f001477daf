"""Trained models and training runs kept in a session's state, so later calls of the same session can use them.

Everything lives in ``session.state[STATE_KEY]`` of the worker that trained the model: another session (or
another worker) does not see it, and it goes away with the session. Model ids are ``model-1``, ``model-2``, ...
per session. Run records (running / complete / cancelled / failed) are kept for the last ``MAX_RUNS`` runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_worker import Session

from .mlp import Params, parameter_count

if TYPE_CHECKING:
    from .training import Trainer

STATE_KEY = "adapters.ml"
MAX_RUNS = 50


class UnknownModelError(LookupError):
    """No model of that id in this session; the message lists the ones there are."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0])


@dataclass(slots=True)
class TrainedModel:
    model_id: str
    params: Params
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    created_at: float

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "created_at": self.created_at,
            "parameters": parameter_count(self.params),
            "hyperparameters": self.hyperparameters,
            **self.metrics,
        }


@dataclass(slots=True)
class RunRecord:
    """What happened to one ``train_model`` call; ``steps`` follows the trainer live while it runs."""

    run_id: str
    epochs: int
    state: str = "running"  # running | complete | cancelled | failed
    epochs_done: int = 0
    steps: int = 0
    model_id: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    steps_source: Trainer | None = None  # the Trainer while running (its .steps is read live)

    def summary(self) -> dict[str, Any]:
        steps = self.steps_source.steps if self.steps_source is not None else self.steps
        return {
            "run_id": self.run_id,
            "state": self.state,
            "epochs": self.epochs,
            "epochs_done": self.epochs_done,
            "steps": steps,
            "model_id": self.model_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class SessionModels:
    """The models and runs of one session."""

    def __init__(self) -> None:
        self._models: dict[str, TrainedModel] = {}
        self._runs: list[RunRecord] = []
        self._next_model = 1
        self._next_run = 1
        self._lock = threading.Lock()

    @classmethod
    def of(cls, session: Session) -> SessionModels:
        """The session's store, created on first use."""
        store = session.state.get(STATE_KEY)
        if store is None:
            store = session.state.setdefault(STATE_KEY, cls())
        return store

    def new_run(self, epochs: int) -> RunRecord:
        with self._lock:
            record = RunRecord(run_id=f"run-{self._next_run}", epochs=epochs)
            self._next_run += 1
            self._runs.append(record)
            del self._runs[:-MAX_RUNS]
        return record

    def add(self, params: Params, hyperparameters: dict[str, Any], metrics: dict[str, float]) -> TrainedModel:
        with self._lock:
            model = TrainedModel(f"model-{self._next_model}", params, hyperparameters, metrics, time.time())
            self._next_model += 1
            self._models[model.model_id] = model
        return model

    def get(self, model_id: str) -> TrainedModel:
        with self._lock:
            model = self._models.get(model_id)
            if model is None:
                raise UnknownModelError(f"unknown model_id {model_id!r}; {self._available()}")
            return model

    def delete(self, model_id: str) -> None:
        with self._lock:
            if self._models.pop(model_id, None) is None:
                raise UnknownModelError(f"unknown model_id {model_id!r}; {self._available()}")

    def models(self) -> list[TrainedModel]:
        with self._lock:
            return list(self._models.values())

    def runs(self) -> list[RunRecord]:
        with self._lock:
            return list(self._runs)

    def _available(self) -> str:
        if not self._models:
            return "this session has no models (train one with train_model in this session first)"
        return "models in this session: " + ", ".join(self._models)
