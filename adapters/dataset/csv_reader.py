"""Reading a numeric CSV file in batches of lines, never whole, with errors that name the file and line.

Each batch of up to ``chunk_rows`` lines is parsed by ``numpy.loadtxt`` (NumPy's C parser) into a float64 array
of shape (rows, columns). Blank lines and lines starting with ``#`` are skipped. Only when NumPy refuses a batch
is it walked again line by line with the ``csv`` module, to report the first bad line by its number in the file.

The first content line is a header when ``header`` is True, or (``header`` None) when any of its fields is not a
number; its fields become the column names. Every row must have as many fields as the first row (or header).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

COMMENT = "#"


class CsvFormatError(ValueError):
    """A line of the file is not a row of numbers. The message names the file, line and column, never the text
    found there: the tool hands out numbers, and its errors must not turn it into a reader of any text file."""


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


class CsvRows:
    """An open CSV file; :meth:`batches` yields ``(row offset, float64 rows)``. Use as a context manager."""

    def __init__(
        self, source: Path | BinaryIO, delimiter: str = ",", header: bool | None = None, name: str | None = None
    ) -> None:
        if len(delimiter) != 1 or delimiter in '\r\n"' + COMMENT:
            raise ValueError(f"delimiter must be one character other than a quote, newline or '#' (got {delimiter!r})")
        self.path = name if name is not None else str(source)  # the caller's words, not the server's path
        self.delimiter = delimiter
        self.columns: list[str] | None = None
        self.n_columns: int | None = None
        self._line_no = 0  # number of the last line read
        self._pending: tuple[int, str] | None = None  # a first line that turned out to be data
        binary = source if not isinstance(source, Path) else open(source, "rb")  # noqa: SIM115 - closed by close()
        self._file: IO[str] | None = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        try:
            self._read_header(header)
        except BaseException:
            self.close()
            raise

    def _content_lines(self, limit: int) -> list[tuple[int, str]]:
        """(line number, text) of the next ``limit`` content lines (fewer at the end of the file)."""
        assert self._file is not None
        lines: list[tuple[int, str]] = []
        if limit <= 0:
            return lines
        try:
            for raw in self._file:
                self._line_no += 1
                text = raw.rstrip("\r\n")
                stripped = text.strip()
                if stripped and not stripped.startswith(COMMENT):
                    lines.append((self._line_no, text))
                    if len(lines) == limit:
                        break
        except UnicodeDecodeError as exc:
            raise CsvFormatError(f"{self.path}:{self._line_no + 1}: not UTF-8 text ({exc.reason})") from None
        return lines

    def _fields(self, text: str) -> list[str]:
        return next(csv.reader([text], delimiter=self.delimiter))

    def _read_header(self, header: bool | None) -> None:
        found = self._content_lines(1)
        if not found:
            return
        first = found[0]
        fields = self._fields(first[1])
        self.n_columns = len(fields)
        if header or (header is None and not all(_is_number(f) for f in fields)):
            self.columns = [f.strip() for f in fields]
        else:
            self._pending = first

    def batches(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive float64 arrays of up to ``chunk_rows`` rows, each of ``n_columns`` columns."""
        offset = 0
        while True:
            if self._pending is not None:
                lines = [self._pending, *self._content_lines(chunk_rows - 1)]
                self._pending = None
            else:
                lines = self._content_lines(chunk_rows)
            if not lines:
                return
            rows = self._parse(lines)
            yield offset, rows
            offset += len(rows)

    def _parse(self, lines: list[tuple[int, str]]) -> np.ndarray:
        texts = [text for _, text in lines]
        try:
            rows = np.loadtxt(texts, delimiter=self.delimiter, dtype=np.float64, ndmin=2, quotechar='"', comments=None)
        except ValueError:
            rows = None
        if rows is None or rows.shape[1] != self.n_columns:
            self._raise_first_bad_line(lines)
            raise CsvFormatError(f"{self.path}: lines {lines[0][0]}-{lines[-1][0]} could not be parsed as numbers")
        return rows

    def _raise_first_bad_line(self, lines: list[tuple[int, str]]) -> None:
        for line_no, text in lines:
            fields = self._fields(text)
            if len(fields) != self.n_columns:
                raise CsvFormatError(f"{self.path}:{line_no}: {len(fields)} fields, expected {self.n_columns}")
            for column, field in enumerate(fields, 1):
                if not _is_number(field):
                    raise CsvFormatError(f"{self.path}:{line_no}, column {column}: not a number")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CsvRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
