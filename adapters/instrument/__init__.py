"""Instrument monitoring: poll instrument parameters and stream a snapshot, then change events only.

Load it as ``adapters.instrument:InstrumentAdapter``. Modules:
- ``adapter``: the tools; ``monitor``: the polling loop and its chunks; ``registry``: running monitors;
- ``readings``: readings, change events, one poll; ``changes``: change detection and tolerances;
- ``filters``: include/exclude glob patterns; ``source_spec``: choosing and opening a source;
- ``stations``: station files by name from the worker's station directory; ``recent``: the recent-changes ring;
- ``sources``: the source interface, the seeded simulated lab, QCoDeS stations and the on-set hook (optional,
  imported lazily).
"""

from .adapter import InstrumentAdapter

__all__ = ["InstrumentAdapter"]
