"""The dataset adapter: large data transfer as streams of NumPy batches, generated or read from files.

Modules: ``synthetic`` (seeded random batches), ``npy_reader`` and ``csv_reader`` (files in batches of rows),
``paths`` (where ``stream_file`` may read), ``adapter`` (the tools).
"""

from .adapter import DatasetAdapter

__all__ = ["DatasetAdapter"]
