"""Files a caller names: opened only under the operator's data root, with errors that leak nothing.

A tool that opens a path its caller gives reads with the worker process's permissions, so whoever may call the
tool may read what that user can. The operator draws the line with ``KRAIT_DATA_ROOT`` (read at each call):

- **set**: a path is taken relative to the root (an absolute path must also lie under it), and the file is
  accepted only if its real location, after ``..`` and every symbolic link are resolved, lies under the root's
  real location. ``../``, absolute paths elsewhere and links pointing out of the tree are refused with one
  message, whether or not the target exists, so a refusal says nothing about the world outside the root.
- **unset** (or empty): any file the worker's user can read, relative paths from the worker's working directory
  (the behaviour ``stream_file`` has always documented; a worker serving TCP needs a token by default, and a
  pool's link workers answer only the pool's own process).

The check is made again on what was opened: the file is opened with ``O_NOFOLLOW`` and ``O_NONBLOCK`` (a FIFO
cannot hang the call), then the descriptor's own path (``/proc/self/fd``) must still lie under the root and name
a regular file, so a link swapped in between the check and the open is caught.

Every refusal is a :class:`FileArgumentError` (``INVALID_ARGUMENT``, no traceback) naming the argument and the
rule, never the root's location nor anything read from a file: adapters reporting a file they cannot decode use
:func:`undecodable` for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .tool import ArgumentError

ROOT_ENV = "KRAIT_DATA_ROOT"


class FileArgumentError(ArgumentError):
    """A path argument names no file this worker may read (``INVALID_ARGUMENT``; ``type`` says which rule)."""

    error_type = "FileArgumentError"


def data_root() -> Path | None:
    """The real location of ``KRAIT_DATA_ROOT``, or None when it is unset (any readable file)."""
    root = os.environ.get(ROOT_ENV, "")
    return Path(root).resolve() if root else None


def _outside(argument: str, path: str) -> FileArgumentError:
    return FileArgumentError(
        f"argument {argument!r}: {path[:200]!r} is outside the data root ({ROOT_ENV}): name a file under it,"
        " relative to the root",
        error_type="PathNotAllowedError",
    )


def resolve_path(path: str, *, argument: str = "path") -> Path:
    """The real location of the existing regular file ``path`` names, checked against the data root."""
    if not isinstance(path, str) or not path:
        raise FileArgumentError(f"argument {argument!r} is empty: name a file")
    if "\0" in path:
        raise FileArgumentError(f"argument {argument!r} holds a NUL character")
    root = data_root()
    try:
        # under a root, an absolute path replaces the root here: it is checked below like any other
        candidate = (root / path).resolve() if root is not None else Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a link loop: said as "outside" under a root, which it may well lead to
        if root is not None:
            raise _outside(argument, path) from None
        raise FileArgumentError(f"argument {argument!r}: {path[:200]}: cannot be resolved (a link loop?)") from None
    if root is not None and not candidate.is_relative_to(root):
        raise _outside(argument, path)  # before looking at it: missing and existing files outside read the same
    try:
        info = candidate.stat()
    except FileNotFoundError:
        where = f" under the data root ({ROOT_ENV})" if root is not None else ""
        raise FileArgumentError(
            f"argument {argument!r}: {path[:200]}: no such file{where}", error_type="FileNotFoundError"
        ) from None
    except OSError as exc:  # a name too long, a component that is a file, no permission on a directory...
        raise FileArgumentError(f"argument {argument!r}: {path[:200]}: {exc.strerror or 'cannot be read'}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileArgumentError(f"argument {argument!r}: {path[:200]}: not a regular file", error_type="NotAFileError")
    return candidate


def open_path(path: str, *, argument: str = "path") -> BinaryIO:
    """Open the file ``path`` names for reading (binary, unbuffered position at 0), confined to the data root.

    The caller closes it (``with open_path(...) as f``). Raises :class:`FileArgumentError` for every refusal.
    """
    real = resolve_path(path, argument=argument)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # e.g. EACCES: the worker's user may not read it; ELOOP: a link swapped in
        raise FileArgumentError(f"argument {argument!r}: {path[:200]}: {exc.strerror or 'cannot be opened'}") from None
    try:
        _check_opened(fd, real, path, argument)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_opened(fd: int, real: Path, path: str, argument: str) -> None:
    """What was opened is what was checked: a regular file, still under the root."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise FileArgumentError(f"argument {argument!r}: {path[:200]}: not a regular file", error_type="NotAFileError")
    root = data_root()
    if root is None:
        return
    opened: Path | None = None
    with contextlib.suppress(OSError):
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
    if opened is None:  # no /proc: the checked path must still be this very file
        try:
            now = os.stat(real, follow_symlinks=False)
        except OSError:
            raise _outside(argument, path) from None
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise _outside(argument, path)
    elif not opened.is_relative_to(root):
        raise _outside(argument, path)


def undecodable(argument: str, path: str, what: str) -> FileArgumentError:
    """The error for a file that is not ``what`` (``"a WAV file"``): it names the argument and never quotes the
    file's bytes (a decoder's own message often does: ``File format b'root' not understood``)."""
    return FileArgumentError(f"argument {argument!r}: {path[:200]}: not {what}", error_type="FileFormatError")
