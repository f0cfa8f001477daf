"""Type hints to JSON Schema and back: what a tool's parameters and results look like on the wire.

pydantic does the work (one model per tool gives both the JSON Schema and the validation, so the two cannot
disagree). What is here is what pydantic leaves to its callers:

- parameter descriptions from the docstring's ``Args:`` / ``Parameters`` section (``docstring_parser`` reads
  Google, NumPy and reST styles);
- ``typing.TypedDict`` on Python < 3.12, which pydantic refuses: such classes are rebuilt as
  ``typing_extensions.TypedDict`` with the same fields;
- the result schema of a tool, from its return annotation (a generator's yield type), with Krait's own wire
  forms for arrays, bytes, NumPy scalars and DataFrames.
"""

from __future__ import annotations

import collections.abc as abc
import functools
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import docstring_parser
import numpy as np
import pydantic
import typing_extensions
from pydantic import ConfigDict, WithJsonSchema

from .. import codec
from ..frames import ARROW
from .chunk import StreamChunk, chunk_data_type

BINARY_SCHEMA: dict[str, dict[str, Any]] = {
    "npy": {"type": "string", "contentMediaType": codec.NPY, "x-krait-binary": True},
    "bytes": {"type": "string", "contentMediaType": codec.BYTES, "x-krait-binary": True},
}
DATAFRAME_SCHEMA: dict[str, Any] = {"type": "string", "contentMediaType": ARROW, "x-krait-binary": True}

_ITERATORS = (abc.Iterator, abc.Iterable, abc.Generator, abc.AsyncIterator, abc.AsyncIterable, abc.AsyncGenerator)


def param_descriptions(func: Callable[..., Any]) -> dict[str, str]:
    """Parameter descriptions from the docstring (Google, NumPy or reST style), by parameter name."""
    doc = func.__doc__
    if not doc:
        return {}
    try:
        parsed = docstring_parser.parse(doc)
    except docstring_parser.ParseError:
        return {}
    return {p.arg_name: " ".join(p.description.split()) for p in parsed.params if p.description}


def map_annotation(annotation: Any, leaf: Callable[[Any], Any]) -> Any:
    """``annotation`` with every type inside it (generic arguments, union members, ``Annotated`` types) passed
    through ``leaf``, which returns a replacement or None to keep the type and look inside it."""
    replaced = leaf(annotation)
    if replaced is not None:
        return replaced
    origin = typing.get_origin(annotation)
    if origin is None or origin is Literal:
        return annotation
    if origin is Annotated:
        inner = map_annotation(annotation.__origin__, leaf)
        return annotation if inner is annotation.__origin__ else Annotated[(inner, *annotation.__metadata__)]
    args = typing.get_args(annotation)
    new = tuple(a if isinstance(a, list) else map_annotation(a, leaf) for a in args)
    if all(n is a for n, a in zip(new, args, strict=True)):
        return annotation
    if origin in (Union, types.UnionType):
        return Union[new]  # noqa: UP007 - rebuilt from a tuple of members
    if isinstance(annotation, types.GenericAlias):
        return types.GenericAlias(origin, new)
    return annotation.copy_with(new)


def _is_typing_typeddict(tp: Any) -> bool:
    return sys.version_info < (3, 12) and typing.is_typeddict(tp) and type(tp).__module__ == "typing"


_REQUIRED = (typing.Required, typing.NotRequired, typing_extensions.Required, typing_extensions.NotRequired)


@functools.cache
def _as_extensions_typeddict(cls: Any) -> Any:
    fields = {}
    for key, hint in typing.get_type_hints(cls, include_extras=True).items():
        # the hint itself decides where it says (__required_keys__ misses NotRequired in string annotations)
        required = key in cls.__required_keys__
        while typing.get_origin(hint) in _REQUIRED:
            required = typing.get_origin(hint) in (typing.Required, typing_extensions.Required)
            hint = typing.get_args(hint)[0]
        wrap = typing_extensions.Required if required else typing_extensions.NotRequired
        fields[key] = wrap[compatible(hint)]
    rebuilt: Any = typing_extensions.TypedDict(cls.__name__, fields)  # type: ignore[misc]  # a computed name
    rebuilt.__module__, rebuilt.__qualname__, rebuilt.__doc__ = cls.__module__, cls.__qualname__, cls.__doc__
    return rebuilt


def compatible(annotation: Any) -> Any:
    """``annotation`` with ``typing.TypedDict`` classes rebuilt as ``typing_extensions.TypedDict`` where pydantic
    needs it (Python < 3.12)."""
    return map_annotation(annotation, lambda tp: _as_extensions_typeddict(tp) if _is_typing_typeddict(tp) else None)


def unwrap_optional(annotation: Any) -> Any:
    """``X`` for ``X | None`` and ``Annotated[X, ...]``; anything else unchanged."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return unwrap_optional(members[0])
    if typing.get_origin(annotation) is Annotated:
        return unwrap_optional(typing.get_args(annotation)[0])
    return annotation


def binary_kind(annotation: Any) -> str | None:
    """``"npy"`` for NumPy array parameters, ``"bytes"`` for bytes: they travel as binary arguments."""
    inner = unwrap_optional(annotation)
    if inner is np.ndarray or typing.get_origin(inner) is np.ndarray:
        return "npy"
    if inner in (bytes, bytearray):
        return "bytes"
    return None


def yield_type(annotation: Any) -> Any | None:
    """The item type of an iterator annotation (``Iterator[T]``, ``AsyncGenerator[T, None]``, ...), ``Any`` for a
    bare one, None when ``annotation`` is not an iterator type."""
    if annotation in _ITERATORS:
        return Any
    if typing.get_origin(annotation) in _ITERATORS:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


def _is_dataframe(tp: Any) -> bool:
    return isinstance(tp, type) and tp.__name__ == "DataFrame" and tp.__module__.startswith("pandas")


def _result_leaf(tp: Any) -> Any:
    """Krait's wire form of the types pydantic has no JSON Schema for; a StreamChunk's data type for it."""
    if tp is StreamChunk or typing.get_origin(tp) is StreamChunk:
        return map_annotation(chunk_data_type(tp), _result_leaf)
    if tp is np.ndarray or typing.get_origin(tp) is np.ndarray:
        return Annotated[Any, WithJsonSchema(BINARY_SCHEMA["npy"])]
    if _is_dataframe(tp):
        return Annotated[Any, WithJsonSchema(DATAFRAME_SCHEMA)]
    if isinstance(tp, type) and issubclass(tp, np.generic):
        for kind, schema in ((np.bool_, "boolean"), (np.integer, "integer"), (np.floating, "number")):
            if issubclass(tp, kind):
                return Annotated[Any, WithJsonSchema({"type": schema})]
    return compatible(tp) if _is_typing_typeddict(tp) else None


def result_schema(annotation: Any) -> dict[str, Any] | None:
    """The JSON Schema of a result (or of each chunk's data) of type ``annotation``: None when nothing is known
    (``Any``). A value typed bytes is raw bytes on the wire, not JSON. Raises TypeError for a type Krait
    cannot put on the wire."""
    annotation = chunk_data_type(annotation)
    if annotation is Any:
        return None
    if annotation in (bytes, bytearray, memoryview):
        return dict(BINARY_SCHEMA["bytes"])
    mapped = map_annotation(annotation, _result_leaf)
    try:
        # a result always carries its defaulted fields: they are required in what the caller receives
        config = ConfigDict(json_schema_serialization_defaults_required=True)
        model = pydantic.create_model("result", __config__=config, value=(mapped, ...))
        schema = model.model_json_schema(mode="serialization")
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
        raise TypeError(f"the result type {_name(annotation)} has no JSON form ({_first_line(exc)})") from None
    out: dict[str, Any] = schema["properties"]["value"]
    out.pop("title", None)
    if "$defs" in schema:
        out["$defs"] = schema["$defs"]
    return out


def _name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else repr(annotation)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
