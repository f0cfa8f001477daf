"""The analyses ``analyse_stream`` runs, with the options of the ``stream_<analysis>`` tool of the same name.

``analyse_stream`` takes one ``analysis`` and its ``options`` as one object rather than six tools' worth of
flat parameters. The options are not written out a second time: :func:`options_model` builds a pydantic model
from the ``stream_<analysis>`` tool's own signature (its analysis parameters: names, types, defaults,
descriptions), so both tools always take the same options with the same checks, and :func:`build_analyser`
builds the very analyser that tool builds, so the chunks are the same.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Literal

import pydantic
from pydantic import ConfigDict

from python_worker.sdk import ArgumentError

from . import runner
from .analysers import (
    LevelsAnalyser,
    OctaveAnalyser,
    PitchAnalyser,
    ScopeAnalyser,
    SpectrogramAnalyser,
    SpectrumAnalyser,
)

Analysis = Literal["levels", "spectrum", "spectrogram", "octave", "pitch", "scope"]
ANALYSES: tuple[str, ...] = typing.get_args(Analysis)

# the stream tools' parameters that say where audio comes from and how it is paced: not analysis options
SOURCE_PARAMS = frozenset(
    {"self", "source", "device", "path", "signal", "sample_rate", "channels", "block_size", "max_rate_hz",
     "duration_s", "max_chunks", "realtime", "ctx"}
)  # fmt: skip


def options_model(analysis: str, tool: Callable[..., Any]) -> type[pydantic.BaseModel]:
    """The options of ``tool`` (a ``stream_<analysis>`` method) as a strict pydantic model, unknown keys refused."""
    hints = typing.get_type_hints(tool, include_extras=True)
    fields: dict[str, Any] = {
        name: (hints[name], param.default)
        for name, param in inspect.signature(tool).parameters.items()
        if name not in SOURCE_PARAMS
    }
    config = ConfigDict(extra="forbid", strict=True)
    return pydantic.create_model(f"{analysis.capitalize()}Options", __config__=config, **fields)


def parse_options(analysis: str, model: type[pydantic.BaseModel], options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` checked against ``model``, defaults filled in; an ArgumentError names the bad option."""
    try:
        return model.model_validate(options or {}).model_dump()
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields)
                problems.append(f"options.{where}: not an option of analysis={analysis!r} (its options: {known})")
            else:
                problems.append(f"options.{where}: {error['msg']}")
        raise ArgumentError("; ".join(problems)) from None


def build_analyser(
    analysis: str, sample_rate: int, channels: int, block_size: int, options: dict[str, Any]
) -> runner.Analyser:
    """The analyser ``stream_<analysis>`` builds for these options."""
    if analysis == "levels":
        return LevelsAnalyser(sample_rate, channels, **options)
    if analysis == "spectrum":
        return SpectrumAnalyser(sample_rate, channels, **options)
    if analysis == "spectrogram":
        return SpectrogramAnalyser(sample_rate, channels, **options)
    if analysis == "octave":
        return OctaveAnalyser(sample_rate, channels, **options)
    if analysis == "pitch":
        return PitchAnalyser(sample_rate, channels, **options)
    if analysis == "scope":
        window_s = options["window_s"]
        if window_s is not None and window_s <= 0:
            raise ValueError(f"window_s must be > 0 (or null: one block), got {window_s}")
        frames = round(window_s * sample_rate) if window_s is not None else block_size
        return ScopeAnalyser(sample_rate, channels, window_frames=frames, points=options["points"],
                             format=options["format"])  # fmt: skip
    raise ValueError(f"analysis must be one of {', '.join(ANALYSES)}, got {analysis!r}")
