"""DatasetAdapter: large data transfer as streams of NumPy batches (.npy chunks), generated or read from files.

Chunk schemas (both tools):
- data chunks: an ndarray (content type ``application/x-npy``), metadata ``{"offset": first row's index,
  "rows": rows in this chunk}`` (strings, as all metadata); ``stream_file`` on a CSV adds ``"columns"`` (a JSON
  list of names) to the first chunk's metadata when the file has a header
- the final chunk (explicit, is_final): ``{"rows", "bytes", "chunks", "dtype", "shape", ...}`` with ``rows``,
  ``bytes`` and ``chunks`` also in its metadata; ``bytes`` counts the arrays' data, not the .npy headers

``write_rows`` goes the other way: the rows its caller streams (JSON objects) become a CSV or JSON Lines file
under ``KRAIT_DATA_ROOT`` (adapters/dataset/writer.py says how the path is confined); it returns
``{"rows", "bytes", "path"}``, the path relative to the root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import PurePath
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from python_worker import BaseAdapter, StreamChunk, ToolContext, open_path, tool
from python_worker.sdk import ArgumentError

from .csv_reader import CsvRows
from .npy_reader import NpyRows
from .synthetic import check_request, generate_batches
from .writer import CsvEncoder, SafeWriter, TargetDir

READERS = {".npy": "npy", ".csv": "csv"}
WRITE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class Totals:
    """What a stream has sent so far: rows, data bytes and chunks."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0
        self.chunks = 0

    def add(self, batch: np.ndarray, rows: int) -> None:
        self.rows += rows
        self.bytes += batch.nbytes
        self.chunks += 1

    def final(self, **extra: Any) -> StreamChunk[Any]:
        data = {"rows": self.rows, "bytes": self.bytes, "chunks": self.chunks, **extra}
        meta = {"rows": str(self.rows), "bytes": str(self.bytes), "chunks": str(self.chunks)}
        return StreamChunk(data=data, is_final=True, metadata=meta)


def _batch_chunk(batch: np.ndarray, offset: int, rows: int, extra: dict[str, str] | None = None) -> StreamChunk[Any]:
    return StreamChunk(data=batch, metadata={"offset": str(offset), "rows": str(rows), **(extra or {})})


class DatasetAdapter(BaseAdapter):
    @tool(
        description="Stream a seeded random dataset of rows x columns as .npy batches of chunk_size rows"
        " (float32/float64: standard normal, or uniform in [0, 1) with distribution='uniform' (cheaper);"
        " int32/int64: uniform in [0, 1000000)); totals on the final chunk",
        supports_streaming=True,
    )
    def generate_dataset(
        self,
        rows: int,
        chunk_size: int = 10_000,
        columns: int = 10,
        seed: int = 0,
        dtype: str = "float32",
        distribution: str | None = None,
        ctx: ToolContext | None = None,
    ) -> Iterator[Any]:
        distribution = check_request(rows, chunk_size, columns, seed, dtype, distribution)
        totals = Totals()
        for offset, batch in generate_batches(rows, chunk_size, columns, seed, dtype, distribution):
            if ctx is not None and ctx.cancelled:
                return
            totals.add(batch, len(batch))
            yield _batch_chunk(batch, offset, len(batch))
        yield totals.final(columns=columns, dtype=dtype, distribution=distribution, seed=seed, shape=[rows, columns])

    @tool(
        description="Stream an existing .npy (memory-mapped; any dtype and shape, split along the first axis) or"
        " numeric .csv file (float64 rows; optional header) in batches of chunk_rows rows; totals on the final"
        " chunk. The path is read by the worker process (confined to KRAIT_DATA_ROOT when that is set)",
        supports_streaming=True,
    )
    def stream_file(
        self,
        path: str,
        chunk_rows: int = 10_000,
        delimiter: str = ",",
        header: bool | None = None,
        ctx: ToolContext | None = None,
    ) -> Iterator[Any]:
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be > 0 (got {chunk_rows})")
        with open_path(path) as file:  # confined to KRAIT_DATA_ROOT; closed on every ending, cancellation included
            yield from self._stream_file(file, path, chunk_rows, delimiter, header, ctx)

    def _stream_file(
        self, file: Any, path: str, chunk_rows: int, delimiter: str, header: bool | None, ctx: ToolContext | None
    ) -> Iterator[Any]:
        suffix = PurePath(path).suffix
        kind = READERS.get(suffix.lower())
        if kind is None:
            raise ValueError(
                f"{path}: unsupported file type {suffix or '(no extension)'!r}; stream_file reads .npy and .csv"
            )
        totals = Totals()
        if kind == "npy":
            with NpyRows(file, name=path) as npy:
                for offset, batch in npy.batches(chunk_rows):
                    if ctx is not None and ctx.cancelled:
                        return
                    rows = len(batch) if batch.ndim else 1
                    totals.add(batch, rows)
                    yield _batch_chunk(batch, offset, rows)
                shape, dtype = list(npy.shape), str(npy.dtype)
            yield totals.final(path=path, format="npy", dtype=dtype, shape=shape)
        else:
            with CsvRows(file, delimiter=delimiter, header=header, name=path) as csv_rows:
                names = json.dumps(csv_rows.columns) if csv_rows.columns is not None else None
                for offset, batch in csv_rows.batches(chunk_rows):
                    if ctx is not None and ctx.cancelled:
                        return
                    totals.add(batch, len(batch))
                    first = {"columns": names} if names is not None and totals.chunks == 1 else None
                    yield _batch_chunk(batch, offset, len(batch), first)
                n_columns, columns = csv_rows.n_columns, csv_rows.columns
            shape = [totals.rows, n_columns or 0]
            yield totals.final(path=path, format="csv", dtype="float64", shape=shape, columns=columns)

    @tool(
        description="Write the rows the caller streams (JSON objects) to a CSV or JSON Lines file under the data"
        " root (KRAIT_DATA_ROOT); the file appears whole when the input ends, or not at all",
    )
    def write_rows(
        self,
        rows: Iterator[dict[str, Any]],
        path: Annotated[str, Field(description="the file to write, relative to the data root")],
        format: Annotated[
            Literal["csv", "jsonl"] | None,
            Field(
                description="csv: a header of the first row's keys; jsonl: one JSON object a line; null = by"
                " the path's suffix (.csv, .jsonl)"
            ),
        ] = None,
        overwrite: Annotated[bool, Field(description="replace an existing file")] = False,
        ctx: ToolContext | None = None,
    ) -> dict[str, Any]:
        if format is None:
            format = WRITE_FORMATS.get(PurePath(path).suffix.lower())  # type: ignore[assignment]
            if format is None:
                raise ArgumentError(f"argument 'format': {path!r} ends neither in .csv nor .jsonl: pass format=")
        target = TargetDir(path)
        try:
            if not overwrite and target.exists():
                raise target.refuse_existing()  # before reading any input
            writer = SafeWriter(target)
            try:
                count = self._write(writer, rows, format, ctx)
                writer.commit(overwrite)
            finally:
                writer.discard()
            return {"rows": count, "bytes": writer.bytes, "path": target.relative, "format": format}
        finally:
            target.close()

    def _write(self, writer: SafeWriter, rows: Iterator[dict[str, Any]], format: str, ctx: ToolContext | None) -> int:
        encoder = CsvEncoder() if format == "csv" else None
        count = 0
        for index, row in enumerate(rows):
            if ctx is not None:
                ctx.check_cancelled()
            try:
                text = (
                    encoder.encode(row)
                    if encoder is not None
                    else json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
                )
            except ValueError as exc:
                raise ArgumentError(f"write_rows: input item {index}: {exc}") from None
            writer.write(text.encode())
            count += 1
        return count
