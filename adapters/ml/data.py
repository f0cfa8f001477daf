"""The digits dataset and its fixed train / held-out split.

scikit-learn ships the UCI handwritten digits (1797 images of 8x8 pixels, values 0..16, labels 0..9) inside the
package, so training needs no download. The split is fixed (stratified, ``random_state=0``) whatever the training
seed, so "held-out index 17" means the same image for every model and evaluations of different models compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

N_FEATURES = 64  # 8 x 8 pixels
N_CLASSES = 10
PIXEL_MAX = 16.0  # digits pixels are counts 0..16 of a 4x4 block of the original 32x32 bitmap
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True, slots=True)
class Split:
    """Features scaled to [0, 1] (float64, rows are samples) and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def scale_pixels(raw: np.ndarray) -> np.ndarray:
    """Raw digits pixels (0..16) -> model inputs in [0, 1]: x = raw / 16."""
    return np.asarray(raw, dtype=np.float64) / PIXEL_MAX


@lru_cache(maxsize=1)
def load_split() -> Split:
    """The digits split into 80 % training and 20 % held-out data (1437 / 360 images); cached per process."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.data,
        digits.target,
        test_size=HOLDOUT_FRACTION,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )
    arrays = scale_pixels(x_train), y_train.astype(np.int64), scale_pixels(x_val), y_val.astype(np.int64)
    for a in arrays:
        a.flags.writeable = False  # shared by every model of the worker
    return Split(*arrays)


def holdout_raw() -> tuple[np.ndarray, np.ndarray]:
    """The held-out images in raw pixel units (0..16) and their labels, in held-out index order."""
    split = load_split()
    return split.x_val * PIXEL_MAX, split.y_val
