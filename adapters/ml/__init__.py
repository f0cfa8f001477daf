"""The ML adapter: NumPy training on scikit-learn's bundled digits with per-epoch progress, models per session.

Modules: ``data`` (the dataset and its fixed split), ``mlp`` (the network, its gradients and the optimiser),
``metrics``, ``training`` (hyperparameters and the epoch loop), ``store`` (models and runs in session state),
``inputs`` (what ``predict`` accepts), ``adapter`` (the tools).
"""

from .adapter import MLAdapter

__all__ = ["MLAdapter"]
