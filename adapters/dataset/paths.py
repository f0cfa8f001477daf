"""Where ``stream_file`` may read: any file the worker process can read, or only under ``KRAIT_DATA_ROOT``.

Paths are opened by the worker process with its own user's permissions, so a caller can read whatever that user
can. Setting ``KRAIT_DATA_ROOT`` (read when the call is made) confines callers to one directory tree: relative
paths are taken from the root, and a path is accepted only if its real location, after resolving ``..`` and
symbolic links, lies inside the root's real location (so ``../`` and links out of the tree are refused).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "KRAIT_DATA_ROOT"


class PathNotAllowedError(PermissionError):
    """The path lies outside ``KRAIT_DATA_ROOT``."""


def resolve_data_path(path: str) -> Path:
    """The file to open for ``path``; raises FileNotFoundError / PathNotAllowedError naming the path."""
    if not path:
        raise ValueError("path is empty")
    root = os.environ.get(ROOT_ENV, "")
    if root:
        real_root = Path(root).resolve()
        candidate = (real_root / path).resolve()  # an absolute path replaces the root here
        if not candidate.is_relative_to(real_root):
            raise PathNotAllowedError(f"{path}: outside the data root {real_root} ({ROOT_ENV})")
    else:
        candidate = Path(path).expanduser().resolve()
    if not candidate.exists():
        raise FileNotFoundError(f"{path}: no such file" + (f" (under {ROOT_ENV}={root})" if root else ""))
    if not candidate.is_file():
        raise IsADirectoryError(f"{path}: not a regular file")
    return candidate
