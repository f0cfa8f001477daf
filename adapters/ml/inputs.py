"""What ``predict`` accepts: held-out sample indices and/or rows of 64 raw pixels, checked with clear errors."""

from __future__ import annotations

import numpy as np

from .data import N_FEATURES, Split, scale_pixels


def prediction_inputs(
    split: Split, indices: list[int] | None, samples: np.ndarray | None
) -> tuple[np.ndarray, list[int | None]]:
    """Model inputs (scaled to [0, 1]) and the true label of each row (None for caller-given samples).

    Rows from ``indices`` (positions in the held-out set) come first, then the rows of ``samples``.
    """
    if not indices and samples is None:
        raise ValueError("predict needs indices (held-out sample positions) and/or samples (rows of 64 pixels)")
    parts: list[np.ndarray] = []
    labels: list[int | None] = []
    if indices:
        n_val = len(split.y_val)
        bad = [i for i in indices if not 0 <= i < n_val]
        if bad:
            raise ValueError(f"indices must be in 0..{n_val - 1} (the held-out set has {n_val} samples); got {bad[:5]}")
        parts.append(split.x_val[indices])
        labels.extend(int(split.y_val[i]) for i in indices)
    if samples is not None:
        rows = _check_samples(samples)
        parts.append(scale_pixels(rows))
        labels.extend([None] * len(rows))
    return np.concatenate(parts), labels


def _check_samples(samples: np.ndarray) -> np.ndarray:
    if samples.ndim == 1:
        samples = samples.reshape(1, -1)
    if samples.ndim != 2 or samples.shape[1] != N_FEATURES:
        raise ValueError(
            f"samples must have shape (n, {N_FEATURES}) or ({N_FEATURES},): rows of 8x8 pixels in 0..16;"
            f" got shape {samples.shape}"
        )
    if not (np.issubdtype(samples.dtype, np.integer) or np.issubdtype(samples.dtype, np.floating)):
        raise ValueError(f"samples must hold integers or floats, got dtype {samples.dtype}")
    if len(samples) == 0:
        raise ValueError("samples has no rows")
    if np.issubdtype(samples.dtype, np.floating) and not np.all(np.isfinite(samples)):
        raise ValueError("samples contains NaN or infinite values")
    return samples
