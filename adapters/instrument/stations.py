"""Which QCoDeS station files callers may use: the ones in a directory chosen by whoever runs the worker.

A station YAML names classes that QCoDeS imports and instantiates, so the file decides what code the worker
runs: a caller must not be able to point the worker at any readable file. The worker is configured with a
station directory — the ``KRAIT_STATION_DIR`` environment variable, or the ``station_dir`` argument of
``InstrumentAdapter`` (for a subclass) — and callers pick a station by name: ``station="lab"`` means
``<dir>/lab.yaml`` (or ``lab.yml``, or the file ``lab`` itself). Names are plain file names: anything with a
path separator, ``..``, a leading dot or an absolute path is refused with PERMISSION_DENIED, and so is a name
whose file resolves outside the directory (a symbolic link pointing elsewhere). An unknown name is
INVALID_ARGUMENT and lists the stations there; a worker without a station directory answers FAILED_PRECONDITION
saying how to set one.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from python_worker.errors import CallError

ENV_VAR = "KRAIT_STATION_DIR"
SUFFIXES = (".yaml", ".yml")


def _refused(message: str) -> CallError:
    return CallError(message, code=grpc.StatusCode.PERMISSION_DENIED, error_type="StationNotAllowed")


class StationDirectory:
    """Resolves station names to files inside one directory (None: the worker allows no station files)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        configured = directory if directory is not None else os.environ.get(ENV_VAR) or None
        self.directory = None if configured is None else Path(configured).expanduser().resolve()

    def names(self) -> list[str]:
        """The stations callers can pick: the YAML files in the directory, without their suffix."""
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.iterdir() if p.suffix in SUFFIXES and self._inside(p))

    def _inside(self, path: Path) -> bool:
        assert self.directory is not None
        return path.resolve().is_relative_to(self.directory) and path.resolve().is_file()

    def resolve(self, name: str) -> Path:
        """The file of station ``name``; a CallError (PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION)
        otherwise."""
        if self.directory is None:
            raise CallError(
                f"station {name!r}: this worker allows no station files; start it with {ENV_VAR}=/path/to/stations"
                " (a directory of QCoDeS station YAML files) and pick one by name",
                code=grpc.StatusCode.FAILED_PRECONDITION,
                error_type="StationsNotConfigured",
            )
        if not name or name.startswith(".") or "/" in name or "\\" in name or os.path.isabs(name):
            raise _refused(
                f"station {name!r} is not a station name: pick one by name from the worker's station directory"
                f" {self.directory} ({', '.join(self.names()) or 'none there'}); paths are not accepted"
            )
        for candidate in (self.directory / f"{name}{suffix}" for suffix in (*SUFFIXES, "")):
            if candidate.is_file() or candidate.is_symlink():
                if not candidate.resolve().is_relative_to(self.directory):
                    raise _refused(f"station {name!r} resolves outside the worker's station directory {self.directory}")
                if candidate.resolve().is_file():
                    return candidate.resolve()
        raise CallError(
            f"no station {name!r} in {self.directory}; stations: {', '.join(self.names()) or 'none'}",
            code=grpc.StatusCode.INVALID_ARGUMENT,
            error_type="StationNotFound",
        )
