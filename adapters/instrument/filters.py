"""Choosing parameters with include/exclude glob patterns (``fnmatch``, case-sensitive).

A pattern selects a parameter when it matches any one of four names of it: the instrument (``dmm``), the
parameter (``voltage``), the QCoDeS full name (``dmm_voltage``) or the dotted name (``dmm.voltage``). So
``"dmm"`` selects every DMM parameter, ``"voltage"`` every instrument's voltage, ``"dmm.v*"`` the DMM's
parameters starting with ``v`` and ``"q?_frequency"`` the frequencies of q0..q9. The dotted name exists because
instrument names may contain ``_`` themselves, which makes full names ambiguous to split.

A parameter is monitored when no include pattern is given (None or []) or one matches, and no exclude pattern
matches: exclude wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TypeVar

from .sources.base import ParameterInfo

T = TypeVar("T")


def names_of(info: ParameterInfo) -> tuple[str, str, str, str]:
    """The four names a pattern is matched against."""
    return info.instrument, info.parameter, info.full_name, f"{info.instrument}.{info.parameter}"


def matches(pattern: str, info: ParameterInfo) -> bool:
    return any(fnmatchcase(name, pattern) for name in names_of(info))


def is_selected(info: ParameterInfo, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    if include and not any(matches(p, info) for p in include):
        return False
    return not (exclude and any(matches(p, info) for p in exclude))


def select(
    params: Iterable[ParameterInfo], include: Sequence[str] | None, exclude: Sequence[str] | None
) -> list[ParameterInfo]:
    """The parameters the patterns select, in source order; a ValueError when none is left (a typo, usually)."""
    params = list(params)
    chosen = [p for p in params if is_selected(p, include, exclude)]
    if not chosen:
        known = ", ".join(p.full_name for p in params[:40]) + (", ..." if len(params) > 40 else "")
        raise ValueError(
            f"no parameter matches include={list(include or [])} exclude={list(exclude or [])};"
            f" patterns match instrument, parameter, instrument_parameter or instrument.parameter."
            f" Parameters: {known or 'none'}"
        )
    return chosen


def first_match(info: ParameterInfo, by_pattern: Mapping[str, T]) -> T | None:
    """The value of the first pattern (in the mapping's order) that matches ``info``, or None."""
    for pattern, value in by_pattern.items():
        if matches(pattern, info):
            return value
    return None
