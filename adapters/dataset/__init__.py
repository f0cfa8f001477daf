"""The dataset adapter: large data transfer as streams of NumPy batches, generated or read from files.

Modules: ``synthetic`` (seeded random batches), ``npy_reader`` and ``csv_reader`` (files in batches of rows),
``adapter`` (the tools). Where ``stream_file`` may read is the SDK's rule for every tool that opens a caller's path
(:mod:`python_worker.sdk.files`: ``KRAIT_DATA_ROOT``).
"""

from .adapter import DatasetAdapter

__all__ = ["DatasetAdapter"]
