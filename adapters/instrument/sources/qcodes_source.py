"""The QCoDeS source: real instruments of a QCoDeS station, living in this worker process.

QCoDeS is an optional extra (``pip install krait[qcodes]``, large): it is imported here, lazily, and only when a
caller asks for ``source="qcodes"``; without it that call fails with :class:`SourceUnavailableError` saying how
to install it.

Where the instruments come from:
- ``station_config``: a QCoDeS station YAML file. The worker loads every instrument it declares the first time
  the file is used, and keeps them open for its lifetime (an instrument is a connection, and QCoDeS allows one
  instance per name), closing them when the worker shuts down (:meth:`StationCache.close`).
- otherwise the default station of this process (``qcodes.Station.default``), e.g. one that a subclass of the
  adapter builds in ``setup()``.

Every gettable parameter of every instrument and of its channels/submodules is listed. ``instrument`` is the
root instrument's name and ``parameter`` the rest of the QCoDeS full name (``lockin_ch1_X`` -> ``lockin`` and
``ch1_X``). Reads are either ``get`` (``parameter.get()``: asks the instrument) or ``cache``
(``parameter.cache.get(get_if_invalid=False)``: the last value QCoDeS knows, no instrument I/O). All instrument
I/O of this process goes through one lock, because drivers are not made for two threads talking to one
instrument at once (two monitors, or a monitor and ``set_parameter``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

from .base import InstrumentSource, ParameterInfo

ReadMode = Literal["get", "cache"]
INSTALL_HINT = "pip install krait[qcodes]"

IO_LOCK = threading.RLock()


class SourceUnavailableError(RuntimeError):
    """A source needs a package that is not installed."""


def import_qcodes() -> Any:
    """``import qcodes``, or a SourceUnavailableError that says how to install it."""
    try:
        import qcodes
    except ImportError as exc:
        raise SourceUnavailableError(
            f"source='qcodes' needs QCoDeS, which is not installed in this worker's Python: {INSTALL_HINT}"
            f" (import failed: {exc})"
        ) from None
    return qcodes


class StationCache:
    """The stations this worker loaded from config files, by resolved path; owns their instruments."""

    def __init__(self) -> None:
        self._stations: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def instruments(self, station_config: str | None) -> tuple[list[Any], str | None]:
        """The instruments to monitor and the resolved config path (None for the default station)."""
        qcodes = import_qcodes()
        if station_config is None:
            station = qcodes.Station.default
            if station is None:
                raise ValueError(
                    "source='qcodes' needs station_config='path/to/station.yaml', or a qcodes.Station created in"
                    " this worker (e.g. in setup() of a subclass of InstrumentAdapter)"
                )
            path = None
        else:
            path = Path(station_config).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"station_config {station_config!r}: no such file ({path})")
            with self._lock, IO_LOCK:
                station = self._stations.get(path)
                if station is None:
                    station = qcodes.Station(config_file=str(path), default=False)
                    self._stations[path] = station
                for name in station.config.get("instruments") or {}:
                    if name not in station.components:
                        station.load_instrument(name)
        base = _instrument_base()
        return [c for c in station.components.values() if isinstance(c, base)], None if path is None else str(path)

    def close(self) -> None:
        """Close every instrument loaded from a config file."""
        with self._lock, IO_LOCK:
            for station in self._stations.values():
                station.close_all_registered_instruments()
            self._stations.clear()


def _instrument_base() -> type:
    from qcodes.instrument import InstrumentBase

    return InstrumentBase


def _parameters_of(instrument: Any) -> list[Any]:
    """Gettable parameters of ``instrument`` and its submodules (channels), each once, in declaration order."""
    base = _instrument_base()
    seen: set[int] = set()
    out: list[Any] = []
    stack = [instrument]
    while stack:
        module = stack.pop(0)
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.extend(p for p in module.parameters.values() if getattr(p, "gettable", False) and id(p) not in seen)
        seen.update(id(p) for p in module.parameters.values())
        # channel lists also appear as submodules; their channels are submodules themselves
        stack.extend(m for m in module.submodules.values() if isinstance(m, base))
    return out


def _unit_of(parameter: Any) -> str:
    unit = getattr(parameter, "unit", None)
    if unit is None:  # MultiParameter: one unit per value
        units = getattr(parameter, "units", None) or ()
        return ", ".join(str(u) for u in units)
    return str(unit)


def _info_of(parameter: Any) -> ParameterInfo:
    root = parameter.root_instrument.name if parameter.root_instrument is not None else ""
    full = parameter.full_name
    name = full[len(root) + 1 :] if root and full.startswith(root + "_") else parameter.name
    return ParameterInfo(root, name, _unit_of(parameter), str(getattr(parameter, "label", "") or ""))


class QcodesSource(InstrumentSource):
    kind = "qcodes"

    def __init__(self, instruments: list[Any], *, read_mode: ReadMode = "get", station_config: str | None = None):
        self.read_mode = read_mode
        self.station_config = station_config
        self._params: dict[str, Any] = {}
        self._infos: list[ParameterInfo] = []
        for instrument in instruments:
            for parameter in _parameters_of(instrument):
                info = _info_of(parameter)
                if info.full_name not in self._params:
                    self._params[info.full_name] = parameter
                    self._infos.append(info)

    def parameters(self) -> list[ParameterInfo]:
        return list(self._infos)

    def _parameter(self, info: ParameterInfo) -> Any:
        try:
            return self._params[info.full_name]
        except KeyError:
            raise KeyError(f"no QCoDeS parameter {info.full_name!r}") from None

    def read(self, info: ParameterInfo) -> tuple[Any, str]:
        parameter = self._parameter(info)
        with IO_LOCK:
            value = parameter.cache.get(get_if_invalid=False) if self.read_mode == "cache" else parameter.get()
        return value, _unit_of(parameter)

    def set(self, info: ParameterInfo, value: Any) -> None:
        parameter = self._parameter(info)
        if not getattr(parameter, "settable", False):
            raise ValueError(f"QCoDeS parameter {info.full_name!r} is not settable")
        with IO_LOCK:
            parameter.set(value)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "station_config": self.station_config, "read_mode": self.read_mode}
