"""A fast path for validating the arguments of tools with simple signatures, pydantic staying the authority.

Most tools take a few ``int``, ``float``, ``str`` and ``bool`` parameters (``None`` allowed or not, plain
defaults). For those, pydantic's strict JSON validation (re-encoding the parsed arguments, building a model,
reading it back) is most of a small call's cost. :class:`FastArgs` accepts only what the schema's validator
certainly accepts, with the value it would produce: exact JSON types, an ``int`` for a ``float`` only where the
conversion is exact, defaults as they are (pydantic does not validate defaults either). Anything else (a missing
required argument, an unknown one, a wrong type, a number near a limit, text that is not UTF-8) returns None,
and the caller runs pydantic, so every refusal and its message is pydantic's own. A test checks both agree on a
table of inputs.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pydantic

from ..codec import is_utf8

_TYPES = (int, float, str, bool)
_NOTHING: Any = object()  # a required parameter's "default"
# an int within this range converts to float exactly (pydantic converts it; nearer the edges it may round)
_EXACT_FLOAT = 1 << 53
# ints beyond 64 bits are left to pydantic (which keeps them exact, as Python does, but is the authority)
_INT_LIMIT = 1 << 63


class FastArgs:
    """The validation fast path of one tool's JSON parameters; :meth:`from_model` returns None when the
    signature is not simple."""

    __slots__ = ("_defaults", "_params")

    def __init__(self, params: dict[str, tuple[type, bool]], defaults: dict[str, Any]) -> None:
        self._params = params  # name -> (type, None allowed)
        self._defaults = defaults  # name -> default, or _NOTHING when required

    @classmethod
    def from_model(cls, model: type[pydantic.BaseModel]) -> FastArgs | None:
        if model.model_config.get("extra") != "forbid":
            return None
        params: dict[str, tuple[type, bool]] = {}
        defaults: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            simple = _simple_type(field.annotation)
            if simple is None or field.metadata or field.alias is not None or field.default_factory is not None:
                return None
            if field.is_required():
                defaults[name] = _NOTHING
            elif field.default is None or type(field.default) in _TYPES:
                defaults[name] = field.default
            else:  # a mutable or unusual default: pydantic decides what the tool gets
                return None
            params[name] = simple
        return cls(params, defaults)

    def validate(self, args: dict[str, Any]) -> dict[str, Any] | None:
        """The keyword arguments pydantic would produce for ``args``, or None when only pydantic may say."""
        params = self._params
        for name in args:
            if name not in params:
                return None
        values: dict[str, Any] = {}
        for name, default in self._defaults.items():
            if name not in args:
                if default is _NOTHING:
                    return None
                values[name] = default
                continue
            value = args[name]
            kind, nullable = params[name]
            given = type(value)
            if given is kind:
                if kind is int:
                    if not -_INT_LIMIT <= value < _INT_LIMIT:
                        return None
                elif kind is float:
                    if value - value != 0.0:  # NaN or an infinity (only a dict built in Python holds one)
                        return None
                elif kind is str and not value.isascii() and not is_utf8(value):
                    return None
            elif value is None:
                if not nullable:
                    return None
            elif kind is float and given is int and -_EXACT_FLOAT <= value <= _EXACT_FLOAT:
                value = float(value)
            else:
                return None
            values[name] = value
        return values


def _simple_type(annotation: Any) -> tuple[type, bool] | None:
    """``(T, None allowed)`` for ``T``, ``T | None`` and ``Optional[T]`` with T one of int, float, str, bool."""
    if annotation in _TYPES:
        return annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if len(members) == 2 and type(None) in members:
            other = members[0] if members[1] is type(None) else members[1]
            if other in _TYPES:
                return other, True
    return None
