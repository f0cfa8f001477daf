"""Minibatch training: hyperparameter checks and an epoch loop that can be stopped between minibatches.

Each epoch shuffles the training set with the run's own generator (seeded, so a seed reproduces a run exactly),
takes minibatches of ``batch_size`` rows, and steps momentum SGD on the loss of :mod:`adapters.ml.mlp`. After
each epoch the model is measured on the whole training set and on the held-out set: the reported losses and
accuracies are those of the model as it stands, not running averages over changing weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from . import mlp
from .data import N_CLASSES, Split
from .metrics import accuracy

MAX_HIDDEN = 4096


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    epochs: int
    learning_rate: float
    hidden: int
    batch_size: int
    momentum: float
    weight_decay: float
    seed: int

    def check(self, n_train: int) -> None:
        """Raise ValueError naming the first hyperparameter that cannot train."""
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0 (got {self.epochs})")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0 (got {self.learning_rate})")
        if not 0 <= self.hidden <= MAX_HIDDEN:
            raise ValueError(f"hidden must be between 0 (softmax regression) and {MAX_HIDDEN} (got {self.hidden})")
        if not 1 <= self.batch_size <= n_train:
            raise ValueError(f"batch_size must be between 1 and the {n_train} training samples (got {self.batch_size})")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1) (got {self.momentum})")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0 (got {self.weight_decay})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (got {self.seed})")

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EpochStats:
    epoch: int
    loss: float  # training cross-entropy (nats per sample) after the epoch
    accuracy: float  # training accuracy after the epoch
    val_loss: float
    val_accuracy: float
    steps: int  # minibatches done since the start of the run
    seconds: float  # wall time of this epoch, measurements included


def measure(params: mlp.Params, x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(cross-entropy, accuracy) of the model on (x, labels)."""
    probs = mlp.predict_proba(params, x)
    return mlp.cross_entropy(probs, labels), accuracy(probs.argmax(axis=1), labels)


class Trainer:
    """Trains one model on ``split``; :meth:`run` yields after every epoch and stops early when ``should_stop()``."""

    def __init__(self, hp: Hyperparameters, split: Split, should_stop: Callable[[], bool] = lambda: False) -> None:
        hp.check(len(split.y_train))
        self.hp = hp
        self.split = split
        self.should_stop = should_stop
        self.rng = np.random.default_rng(hp.seed)
        self.params = mlp.init_params(split.x_train.shape[1], hp.hidden, N_CLASSES, self.rng)
        self.optimizer = mlp.MomentumSGD(hp.learning_rate, hp.momentum)
        self.steps = 0
        self.stopped = False

    def run(self) -> Iterator[EpochStats]:
        x, y = self.split.x_train, self.split.y_train
        n, bs = len(y), self.hp.batch_size
        for epoch in range(1, self.hp.epochs + 1):
            started = time.perf_counter()
            order = self.rng.permutation(n)
            for start in range(0, n, bs):
                # the caller may have gone: check before every minibatch, not only between epochs
                if self.should_stop():
                    self.stopped = True
                    return
                batch = order[start : start + bs]
                _, grads = mlp.loss_and_grads(self.params, x[batch], y[batch], self.hp.weight_decay)
                self.optimizer.step(self.params, grads)
                self.steps += 1
            loss, acc = measure(self.params, x, y)
            val_loss, val_acc = measure(self.params, self.split.x_val, self.split.y_val)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss {loss});"
                    f" lower learning_rate (now {self.hp.learning_rate})"
                )
            yield EpochStats(epoch, loss, acc, val_loss, val_acc, self.steps, time.perf_counter() - started)
