"""The ``@tool`` decorator and ToolSpec: a tool's name, description, streaming flag and parameter model.

Parameters are validated and described by pydantic, which is made for exactly this (a model built from the
signature and type hints gives both validation with per-argument errors and a JSON Schema with defaults).
Validation is strict: ``"3"`` is not an ``int`` and ``1`` is not a ``bool``; an ``int`` is accepted for a
``float``. Parameters typed ``numpy.ndarray`` or ``bytes`` are binary: they travel beside the JSON arguments.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pydantic
from pydantic import ConfigDict, WithJsonSchema

from .context import ToolContext

_TOOL_ATTR = "__krait_tool__"


class ArgumentError(ValueError):
    """The arguments do not fit the tool's signature; the message names the argument."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """Everything the server needs to know about one tool."""

    name: str
    description: str
    supports_streaming: bool
    func: Callable[..., Any]
    context_param: str | None
    binary_params: dict[str, str]  # name -> "npy" | "bytes"
    model: type[pydantic.BaseModel]
    param_names: tuple[str, ...]

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the parameters, defaults included."""
        schema = self.model.model_json_schema()
        schema.pop("title", None)
        schema.setdefault("properties", {})
        return schema

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the signature; return the keyword arguments to call the tool with."""
        try:
            model = self.model.model_validate(args)
        except pydantic.ValidationError as exc:
            raise ArgumentError(self._describe(exc)) from None
        values = {name: getattr(model, name) for name in self.param_names}
        if model.model_extra:
            values.update(model.model_extra)
        return values

    def _describe(self, exc: pydantic.ValidationError) -> str:
        problems = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            arg = str(loc[0]) if loc else "?"
            path = "".join(f"[{p!r}]" for p in loc[1:])
            if error["type"] == "missing":
                problems.append(f"missing required argument '{arg}'")
            elif error["type"] == "extra_forbidden" and path:
                problems.append(f"argument '{arg}'{path}: unknown field")
            elif error["type"] == "extra_forbidden":
                known = ", ".join(self.param_names) or "no arguments"
                problems.append(f"unknown argument '{arg}' ({self.name} takes: {known})")
            else:
                got = error.get("input")
                shown = type(got).__name__ if isinstance(got, (np.ndarray, bytes)) else repr(got)[:80]
                problems.append(f"argument '{arg}'{path}: {error['msg']} (got {shown})")
        return f"{self.name}: " + "; ".join(problems)


def tool(
    func: Callable[..., Any] | None = None,
    *,
    description: str | None = None,
    supports_streaming: bool | None = None,
    name: str | None = None,
) -> Any:
    """Mark an adapter method as a tool.

    ``supports_streaming`` defaults to whether the method is a generator function; a streaming tool may also
    return any iterator. ``description`` defaults to the docstring's first paragraph.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        streaming = inspect.isgeneratorfunction(fn) if supports_streaming is None else supports_streaming
        if inspect.isgeneratorfunction(fn) and not streaming:
            raise TypeError(f"tool {fn.__qualname__} is a generator: declare it with supports_streaming=True")
        doc = inspect.getdoc(fn) or ""
        setattr(
            fn,
            _TOOL_ATTR,
            {"name": name or fn.__name__, "description": description or doc.split("\n\n")[0], "streaming": streaming},
        )
        return fn

    return mark(func) if func is not None else mark


def is_tool(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, _TOOL_ATTR)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    if typing.get_origin(annotation) is Annotated:
        return _unwrap_optional(typing.get_args(annotation)[0])
    return annotation


def _binary_kind(annotation: Any) -> str | None:
    inner = _unwrap_optional(annotation)
    if inner is np.ndarray or typing.get_origin(inner) is np.ndarray:
        return "npy"
    if inner in (bytes, bytearray):
        return "bytes"
    return None


_BINARY_SCHEMA = {
    "npy": {"type": "string", "contentMediaType": "application/x-npy", "x-krait-binary": True},
    "bytes": {"type": "string", "contentMediaType": "application/octet-stream", "x-krait-binary": True},
}


def build_spec(func: Callable[..., Any]) -> ToolSpec:
    """Build the ToolSpec of a function marked with ``@tool`` (``self`` is skipped)."""
    info = getattr(func, _TOOL_ATTR)
    hints = typing.get_type_hints(func, include_extras=True)
    signature = inspect.signature(func)
    fields: dict[str, Any] = {}
    binary: dict[str, str] = {}
    context_param = None
    extra = "forbid"
    for index, param in enumerate(signature.parameters.values()):
        if index == 0 and param.name == "self":
            continue
        annotation = hints.get(param.name, Any)
        if _unwrap_optional(annotation) is ToolContext or (param.name in ("ctx", "context") and annotation is Any):
            context_param = param.name
            continue
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is param.VAR_POSITIONAL:
            raise TypeError(f"tool {func.__qualname__}: *{param.name} cannot be passed by name")
        kind = _binary_kind(annotation)
        if kind is not None:
            binary[param.name] = kind
            annotation = Annotated[annotation, WithJsonSchema(_BINARY_SCHEMA[kind])]
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    config = ConfigDict(strict=True, extra=extra, arbitrary_types_allowed=True)
    model = pydantic.create_model(f"{info['name']}_args", __config__=config, **fields)
    return ToolSpec(
        name=info["name"],
        description=info["description"],
        supports_streaming=info["streaming"],
        func=func,
        context_param=context_param,
        binary_params=binary,
        model=model,
        param_names=tuple(fields),
    )
