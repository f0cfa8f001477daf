"""The QCoDeS source: real instruments of a QCoDeS station, living in this worker process.

QCoDeS is an optional extra (``pip install krait[qcodes]``, large): it is imported here, lazily, and only when a
caller asks for ``source="qcodes"``; without it that call fails with :class:`SourceUnavailableError` saying how
to install it.

Where the instruments come from:
- ``station``: the name of a QCoDeS station YAML file in the worker's station directory (see
  :mod:`..stations`: callers choose by name, never by path). The worker loads every instrument it declares the
  first time the station is used and keeps them open for its lifetime (an instrument is a connection, and
  QCoDeS allows one instance per name), closing them when the worker shuts down (:meth:`StationCache.close`).
- otherwise the default station of this process (``qcodes.Station.default``), e.g. one that a subclass of the
  adapter builds in ``setup()``.

The instruments are listed again at every poll (:meth:`QcodesSource.refresh`): an instrument added to the
station, or a parameter added to an instrument, after a monitor started is picked up by its next poll, and one
that went away is dropped. Every gettable parameter of every instrument and of its channels/submodules is
listed. ``instrument`` is the root instrument's name and ``parameter`` the rest of the QCoDeS full name
(``lockin_ch1_X`` -> ``lockin`` and ``ch1_X``). Reads are either ``get`` (``parameter.get()``: asks the
instrument) or ``cache`` (``parameter.cache.get(get_if_invalid=False)``: the last value QCoDeS knows, no
instrument I/O). An instrument's ``IDN`` (its identity, which does not change) is asked once per source: an
instrument that does not answer ``*IDN?`` then reads as an error once, instead of QCoDeS logging a traceback at
every poll. All instrument I/O of this process goes through one lock, because drivers are not made for two
threads talking to one instrument at once (two monitors, or a monitor and ``set_parameter``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from ..stations import StationDirectory
from .base import InstrumentSource, ParameterInfo
from .qcodes_params import info_of, unit_of
from .qcodes_sets import SET_HOOK, Subscription

ReadMode = Literal["get", "cache"]
INSTALL_HINT = "pip install krait[qcodes]"
IDN_WARNING = "Error getting or interpreting *IDN?"

IO_LOCK = threading.RLock()


class SourceUnavailableError(RuntimeError):
    """A source needs a package that is not installed."""


class InstrumentIdentityError(RuntimeError):
    """An instrument did not answer ``*IDN?``."""


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


Instruments = Callable[[], list[Any]]


class StationCache:
    """The stations this worker loaded from its station directory, by file; owns their instruments."""

    def __init__(self, directory: StationDirectory | None = None) -> None:
        self.directory = directory or StationDirectory()
        self._stations: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def instruments(self, station: str | None) -> Instruments:
        """A function listing the instruments of ``station`` (a name; None: the default station) as they are now."""
        qcodes = import_qcodes()
        if station is None:

            def default() -> list[Any]:
                current = qcodes.Station.default
                if current is None:
                    raise ValueError(
                        "source='qcodes' needs station='<name>' (a station file in the worker's station directory),"
                        " or a qcodes.Station created in this worker (e.g. in setup() of a subclass of"
                        " InstrumentAdapter)"
                    )
                return _instruments_of(current)

            default()  # fail now, before a monitor starts, when there is no default station
            return default
        path = self.directory.resolve(station)
        with self._lock, IO_LOCK, _quiet_idn():  # loading asks *IDN? too: the monitor reports a failure itself
            loaded = self._stations.get(path)
            if loaded is None:
                loaded = qcodes.Station(config_file=str(path), default=False)
                self._stations[path] = loaded
            for name in loaded.config.get("instruments") or {}:
                if name not in loaded.components:
                    loaded.load_instrument(name)
        return lambda: _instruments_of(loaded)

    def close(self) -> None:
        """Close every instrument loaded from a station file."""
        with self._lock, IO_LOCK:
            for station in self._stations.values():
                station.close_all_registered_instruments()
            self._stations.clear()


def _instrument_base() -> type:
    from qcodes.instrument import InstrumentBase

    return InstrumentBase


def _instruments_of(station: Any) -> list[Any]:
    base = _instrument_base()
    return [c for c in list(station.components.values()) if isinstance(c, base)]


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
        params = list(module.parameters.values())
        out.extend(p for p in params if getattr(p, "gettable", False) and id(p) not in seen)
        seen.update(id(p) for p in params)
        # channel lists also appear as submodules; their channels are submodules themselves
        stack.extend(m for m in list(module.submodules.values()) if isinstance(m, base))
    return out


class _IdnFilter(logging.Filter):
    """Takes QCoDeS's "Error getting or interpreting *IDN?" warning (with its traceback) off the log, keeping
    the exception, while one IDN is read."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if IDN_WARNING in record.getMessage():  # the instrument logger prefixes "[name(Class)] "
            if record.exc_info and record.exc_info[1] is not None:
                self.error = record.exc_info[1]
            else:
                self.error = RuntimeError(record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_idn() -> Iterator[_IdnFilter]:
    logger = logging.getLogger("qcodes.instrument.instrument_base")
    catcher = _IdnFilter()
    logger.addFilter(catcher)
    try:
        yield catcher
    finally:
        logger.removeFilter(catcher)


def _is_idn(parameter: Any) -> bool:
    return parameter.name == "IDN" and hasattr(parameter.instrument, "get_idn")


class QcodesSource(InstrumentSource):
    kind = "qcodes"

    def __init__(self, instruments: Instruments, *, read_mode: ReadMode = "get", station: str | None = None):
        self.read_mode = read_mode
        self.station = station
        self._instruments = instruments
        self._params: dict[str, Any] = {}
        self._infos: list[ParameterInfo] = []
        self._identities: dict[str, tuple[Any, str, BaseException | None]] = {}
        self._subscription: Subscription | None = None
        self.refresh()

    def refresh(self) -> bool:
        params: dict[str, Any] = {}
        infos: list[ParameterInfo] = []
        with IO_LOCK:
            for instrument in self._instruments():
                for parameter in _parameters_of(instrument):
                    info = info_of(parameter)
                    if info.full_name not in params:
                        params[info.full_name] = parameter
                        infos.append(info)
        changed = [i.full_name for i in infos] != [i.full_name for i in self._infos]
        self._params, self._infos = params, infos
        return changed

    def parameters(self) -> list[ParameterInfo]:
        return list(self._infos)

    def _parameter(self, info: ParameterInfo) -> Any:
        try:
            return self._params[info.full_name]
        except KeyError:
            raise KeyError(f"no QCoDeS parameter {info.full_name!r}") from None

    def read(self, info: ParameterInfo) -> tuple[Any, str]:
        parameter = self._parameter(info)
        if self.read_mode == "get" and _is_idn(parameter):
            return self._identity(info.full_name, parameter)
        with IO_LOCK:
            value = parameter.cache.get(get_if_invalid=False) if self.read_mode == "cache" else parameter.get()
        return value, unit_of(parameter)

    def _identity(self, full_name: str, parameter: Any) -> tuple[Any, str]:
        """IDN, asked once per source; a failure to answer is an error reading, quietly, every time after."""
        if full_name not in self._identities:
            with IO_LOCK, _quiet_idn() as catcher:
                value = parameter.get()
            self._identities[full_name] = (value, unit_of(parameter), catcher.error)
        value, unit, error = self._identities[full_name]
        if error is not None:
            raise InstrumentIdentityError(f"no answer to *IDN? ({type(error).__name__}: {error})")
        return value, unit

    def set(self, info: ParameterInfo, value: Any) -> None:
        parameter = self._parameter(info)
        if not getattr(parameter, "settable", False):
            raise ValueError(f"QCoDeS parameter {info.full_name!r} is not settable")
        with IO_LOCK:
            parameter.set(value)

    def subscribe_sets(self) -> Subscription:
        if self._subscription is None:
            self._subscription = SET_HOOK.subscribe()
        return self._subscription

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "station": self.station, "read_mode": self.read_mode}

    def close(self) -> None:
        if self._subscription is not None:
            SET_HOOK.unsubscribe(self._subscription)
            self._subscription = None
