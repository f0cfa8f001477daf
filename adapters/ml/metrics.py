"""Classification metrics: accuracy and the confusion matrix."""

from __future__ import annotations

import numpy as np


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions: 1/n sum_i [pred_i == y_i] (0.0 for no samples)."""
    return float(np.mean(predicted == labels)) if len(labels) else 0.0


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """C[t, p] = number of samples of true class t predicted as p (rows: truth, columns: prediction).

    Counted in one pass: each pair (t, p) maps to the flat index t * K + p, and bincount tallies them.
    """
    flat = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
