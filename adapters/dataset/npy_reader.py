"""Reading a .npy file in batches along its first axis, through a memory map, without loading it whole.

The header (magic, version, dtype, shape, order) is parsed with NumPy's own readers; the data is mapped read-only
and viewed as an array of the header's shape, so a batch touches only its own pages. Each batch is handed out as
a C-ordered copy of its rows, never as a view of the map: a view would keep the mapping (and the file descriptor
the mapping holds) alive for as long as anyone still references the chunk, while with copies :meth:`close`
unmaps and closes the file at once, even when a stream is cancelled halfway. The copy costs what reading the
rows costs anyway; for a Fortran-ordered file it is also what gathers each batch's rows into one block.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class NpyRows:
    """An open .npy file; :meth:`batches` yields ``(row offset, rows)``. Use as a context manager."""

    def __init__(self, source: Path | BinaryIO, name: str | None = None) -> None:
        # an open file (the tool's, from python_worker.open_path: confined to the data root) or a path; errors name
        # the file by ``name``, the caller's own words, never by where it really is on the server
        self.path = name if name is not None else str(source)
        self._file: IO[bytes] | None = source if not isinstance(source, Path) else open(source, "rb")  # noqa: SIM115
        self._map: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        assert self._file is not None
        try:
            version = np.lib.format.read_magic(self._file)
        except Exception:  # NumPy's message quotes the file's first bytes: never echo them
            raise ValueError(f"{self.path}: not a .npy file (no .npy magic string)") from None
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise ValueError(f"{self.path}: .npy format version {version} is not supported (1.0 and 2.0 are)")
        try:
            shape, fortran_order, dtype = reader(self._file)
        except Exception:  # NumPy's message quotes the header (its tokenizer raises several types): never echo it
            raise ValueError(f"{self.path}: bad .npy header (not a dtype, order and shape NumPy can read)") from None
        if dtype.hasobject:
            raise ValueError(f"{self.path}: holds Python objects (dtype {dtype}); only plain dtypes can be streamed")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype = dtype
        offset = self._file.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.fstat(self._file.fileno()).st_size
        if size < offset + nbytes:
            raise ValueError(
                f"{self.path}: truncated: its header needs {nbytes} data bytes, the file holds {size - offset}"
            )
        if nbytes:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._array = np.ndarray(shape, dtype, buffer=self._map, offset=offset, order="F" if fortran_order else "C")
        else:
            self._array = np.empty(shape, dtype)

    @property
    def rows(self) -> int:
        """Length of the first axis (a 0-d array counts as one row)."""
        return self.shape[0] if self.shape else 1

    def batches(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive copies of up to ``chunk_rows`` rows (a 0-d array comes as one chunk)."""
        if self._array is None:
            raise ValueError(f"{self.path}: already closed")
        if not self.shape:
            yield 0, np.array(self._array)
            return
        for start in range(0, self.rows, chunk_rows):
            yield start, np.array(self._array[start : start + chunk_rows], order="C")

    def close(self) -> None:
        """Unmap and close the file (idempotent)."""
        self._array = None  # drop the only view of the map, so it can be closed
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
