"""Writing the rows a caller streams to a file under the data root (``write_rows``), safely.

Reading confines paths with :func:`python_worker.sdk.files.resolve_path`; writing needs more, because the file
does not exist yet and must never land outside the root, nor through a link, nor over a file by surprise:

- Writing needs ``KRAIT_DATA_ROOT``: without a root there is no line to draw, so nothing is written.
- The *directory* is resolved (``..`` and links) and must lie under the root's real location and exist; the
  file name itself must be a plain name. The directory is opened (``O_DIRECTORY``) and what was opened is
  checked again through ``/proc/self/fd``, so a link swapped in meanwhile is caught; every later step is relative
  to that descriptor (``dir_fd``), never to the path again.
- Rows go to a fresh temporary file in that directory (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0644), which takes
  the file's name only when the input has ended well: ``link`` (refused if the name exists: no overwrite) or
  ``rename`` (``overwrite=True``: a link at the name is replaced, never followed). A failed or cancelled write
  leaves no file and no half-written one.

Every refusal is a :class:`~python_worker.sdk.files.FileArgumentError` naming the argument and the rule, never
the root's location.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from python_worker.sdk.files import ROOT_ENV, FileArgumentError, data_root

TEMP_PREFIX = ".krait-write-"


def _outside(path: str) -> FileArgumentError:
    return FileArgumentError(
        f"argument 'path': {path[:200]!r} is outside the data root ({ROOT_ENV}): name a file under it, relative"
        " to the root",
        error_type="PathNotAllowedError",
    )


class TargetDir:
    """The opened directory a file will be written in, and the file's name in it."""

    def __init__(self, path: str) -> None:
        if not isinstance(path, str) or not path:
            raise FileArgumentError("argument 'path' is empty: name a file to write")
        if "\0" in path:
            raise FileArgumentError("argument 'path' holds a NUL character")
        root = data_root()
        if root is None:
            raise FileArgumentError(
                f"writing files needs the data root: the operator sets {ROOT_ENV} to the directory callers may"
                " write in",
                error_type="PathNotAllowedError",
            )
        pure = PurePosixPath(path)
        name = pure.name
        if name in ("", ".", "..") or path.endswith("/"):
            raise FileArgumentError(f"argument 'path': {path[:200]!r} names a directory, not a file")
        if name.startswith(TEMP_PREFIX):
            raise FileArgumentError(f"argument 'path': names starting {TEMP_PREFIX!r} are Krait's temporary files")
        try:
            directory = (root / pure.parent).resolve()  # an absolute path replaces the root: checked below
        except (OSError, RuntimeError):
            raise _outside(path) from None
        if not directory.is_relative_to(root):
            raise _outside(path)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileArgumentError(
                f"argument 'path': {path[:200]}: its directory does not exist under the data root",
                error_type="FileNotFoundError",
            ) from None
        except OSError as exc:
            raise FileArgumentError(f"argument 'path': {path[:200]}: {exc.strerror or 'cannot be opened'}") from None
        with contextlib.suppress(OSError):
            if not Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(root):  # swapped in since the check
                os.close(fd)
                raise _outside(path)
        self.fd = fd
        self.name = name
        self.path = path
        self.relative = str((directory / name).relative_to(root))

    def exists(self) -> bool:
        try:
            os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def refuse_existing(self) -> FileArgumentError:
        return FileArgumentError(
            f"argument 'path': {self.path[:200]} exists already: pass overwrite=true to replace it",
            error_type="FileExistsError",
        )

    def close(self) -> None:
        os.close(self.fd)


class SafeWriter:
    """Bytes to a temporary file in ``target``; :meth:`commit` gives it the target's name."""

    def __init__(self, target: TargetDir) -> None:
        self.target = target
        self.temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.temp, flags, 0o644, dir_fd=target.fd)
        except OSError as exc:
            raise FileArgumentError(
                f"argument 'path': {target.path[:200]}: cannot write there ({exc.strerror or 'refused'})"
            ) from None
        self.file = os.fdopen(fd, "wb")
        self.bytes = 0
        self.committed = False

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.bytes += len(data)

    def commit(self, overwrite: bool) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        t = self.target
        if overwrite:
            existing = _lstat(t.name, t.fd)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise FileArgumentError(f"argument 'path': {t.path[:200]} is a directory")
            os.rename(self.temp, t.name, src_dir_fd=t.fd, dst_dir_fd=t.fd)  # replaces a link, never follows it
        else:
            try:
                os.link(self.temp, t.name, src_dir_fd=t.fd, dst_dir_fd=t.fd, follow_symlinks=False)
            except FileExistsError:
                raise t.refuse_existing() from None  # created by someone else while the rows came
            os.unlink(self.temp, dir_fd=t.fd)
        self.committed = True

    def discard(self) -> None:
        """Drop the temporary file (a failed or cancelled write); safe after :meth:`commit`."""
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.target.fd)


def _cell(value: Any) -> Any:
    """A CSV cell: null is empty, booleans as JSON spells them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class CsvEncoder:
    """Rows as CSV: a header of the first row's keys, then one line per row with the same keys."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def encode(self, row: dict[str, Any]) -> str:
        """The CSV text for ``row`` (the header too before the first); ValueError says what is wrong."""
        header = ""
        if self.columns is None:
            self.columns = list(row)
            if not self.columns:
                raise ValueError("the first row has no keys: CSV needs column names")
            header = self._line(self.columns)
        elif list(row) != self.columns:
            missing = [c for c in self.columns if c not in row]
            extra = [k for k in row if k not in self.columns]
            if missing or extra:
                raise ValueError(
                    f"its keys differ from the first row's (missing {missing}, extra {extra}): CSV needs the same"
                    " columns in every row"
                )
        values = [row[c] for c in self.columns]
        for column, value in zip(self.columns, values, strict=True):
            if isinstance(value, (dict, list)):
                raise ValueError(f"column {column!r} holds a {type(value).__name__}: CSV cells are numbers, text,"
                                 " booleans or null (write jsonl for nested values)")  # fmt: skip
        return header + self._line([_cell(v) for v in values])

    def _line(self, cells: list[Any]) -> str:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(cells)
        return self._buffer.getvalue()
