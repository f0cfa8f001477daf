"""What a QCoDeS parameter is called and measured in: the source and its set hook both describe parameters."""

from __future__ import annotations

from typing import Any

from .base import ParameterInfo


def unit_of(parameter: Any) -> str:
    """A parameter's unit ("" when it has none; a MultiParameter's units joined by commas)."""
    unit = getattr(parameter, "unit", None)
    if unit is None:  # MultiParameter: one unit per value
        units = getattr(parameter, "units", None) or ()
        return ", ".join(str(u) for u in units)
    return str(unit)


def info_of(parameter: Any) -> ParameterInfo:
    """A parameter's instrument (its root instrument's name), name within it, unit and label."""
    root = parameter.root_instrument.name if parameter.root_instrument is not None else ""
    full = parameter.full_name
    name = full[len(root) + 1 :] if root and full.startswith(root + "_") else parameter.name
    return ParameterInfo(root, name, unit_of(parameter), str(getattr(parameter, "label", "") or ""))
