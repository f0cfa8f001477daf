"""The ``@tool`` decorator and ToolSpec: a tool's name, description, kind, parameter model and result schema.

Parameters are validated and described by pydantic, which is made for exactly this (a model built from the
signature and type hints gives both validation with per-argument errors and a JSON Schema with defaults).
Arguments arrive as JSON and are validated as JSON (pydantic's strict JSON mode), so what the schema
advertises is what is accepted: an Enum's values, objects for dataclasses, TypedDicts and models, ISO 8601
strings for datetimes, while ``"3"`` is still not an ``int`` and ``1`` not a ``bool`` (an ``int`` is accepted
for a ``float``). Parameters typed ``numpy.ndarray`` or ``bytes`` are binary: they travel beside the JSON
arguments. Mistakes in a tool's definition raise TypeError naming the tool when its adapter class is created.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, overload

import numpy as np
import pydantic
from pydantic import ConfigDict, Field, WithJsonSchema

from .. import codec
from .context import ToolContext
from .fast_args import FastArgs
from .schema import (
    BINARY_SCHEMA,
    binary_kind,
    compatible,
    param_descriptions,
    result_schema,
    unwrap_optional,
    yield_type,
)

_TOOL_ATTR = "__krait_tool__"

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["function", "generator", "coroutine", "async_generator"]


class ArgumentError(ValueError):
    """The arguments do not fit the tool's signature, or a tool refuses one; the message names the argument. A tool
    that raises it ends its call with INVALID_ARGUMENT and no traceback, reported as ``error_type``. (It lives here,
    free of grpc, so that an adapter importing the SDK type-checks without Krait's wire modules.)"""

    error_type = "ArgumentError"

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type


class UnresolvedHint(TypeError):
    """A tool's type hints name something not defined yet (a forward reference); retried when the tools are
    first listed."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A tool's input stream: the parameter annotated ``Iterator[T]`` (``AsyncIterator[T]`` in async tools) that
    receives the items its caller streams. ``kind``: ``json`` (validated against ``item`` like an argument),
    ``npy``, ``bytes``, or ``binary`` (either of the two)."""

    param: str
    item: Any
    kind: Literal["json", "npy", "bytes", "binary"]
    schema: dict[str, Any]
    adapter: pydantic.TypeAdapter[Any] | None  # validates a JSON item (None: any JSON value)
    list_adapter: pydantic.TypeAdapter[Any] | None = None  # the same for a list of items (one call per batch)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """Everything the server needs to know about one tool."""

    name: str
    description: str
    supports_streaming: bool
    func: Callable[..., Any]
    context_param: str | None
    binary_params: dict[str, str]  # name -> "npy" | "bytes"
    model: type[pydantic.BaseModel]  # every parameter: the advertised schema
    param_names: tuple[str, ...]
    json_model: type[pydantic.BaseModel] | None = None  # the JSON parameters: validation
    is_async: bool = False
    result_schema: dict[str, Any] | None = None
    optional_binary: frozenset[str] = frozenset()
    input: InputSpec | None = None  # the tool's input stream, when a parameter is annotated Iterator[T]
    fast_args: FastArgs | None = None  # a simple signature's validation fast path (see fast_args.py)

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the parameters, defaults included."""
        schema = self.model.model_json_schema()
        schema.pop("title", None)
        schema.setdefault("properties", {})
        return schema

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check ``args`` (JSON values, plus arrays and bytes from binary arguments) against the signature; return
        the keyword arguments to call the tool with."""
        if self.fast_args is not None and (fast := self.fast_args.validate(args)) is not None:
            return fast
        model = self.json_model or self.model
        problems = [p for name in self.binary_params if (p := self._check_binary(name, args))]
        plain: dict[str, Any] = {}
        passed: dict[str, Any] = {}  # binary values for **kwargs
        for name, value in args.items():
            if name in self.binary_params:
                continue
            if not isinstance(value, (np.ndarray, bytes, bytearray, memoryview)):
                plain[name] = value
            elif name in self.param_names:
                problems.append(f"argument '{name}' takes JSON, not a binary argument")
            elif model.model_config.get("extra") == "allow":
                passed[name] = value
            else:
                known = ", ".join(self.param_names) or "no arguments"
                problems.append(f"unknown argument '{name}' ({self.name} takes: {known})")
        values: dict[str, Any] = {}
        try:
            validated = model.model_validate_json(codec.encode_json(plain))
        except pydantic.ValidationError as exc:
            problems[:0] = self._describe(exc)
        else:
            values = {name: getattr(validated, name) for name in model.model_fields}
            if validated.model_extra:
                values.update(validated.model_extra)
            # a nested model of the adapter's own keeps its own config: one that allows inf still gets none
            if (found := codec.first_non_finite(values)) is not None:
                (arg, *rest), _ = found
                shown = "".join(f"[{p!r}]" for p in rest)
                problems.append(f"argument '{arg}'{shown}: a number beyond a float's range (floats are 64-bit)")
        if problems:
            raise ArgumentError(f"{self.name}: " + "; ".join(problems))
        values.update((k, args[k]) for k in self.binary_params if k in args)
        values.update(passed)
        return values

    def _check_binary(self, name: str, args: dict[str, Any]) -> str | None:
        kind = self.binary_params[name]
        if name not in args:
            required = self.model.model_fields[name].is_required()
            return f"missing required argument '{name}'" if required else None
        value = args[name]
        media = BINARY_SCHEMA[kind]["contentMediaType"]
        if value is None and name in self.optional_binary:
            return None
        if kind == "npy" and isinstance(value, np.ndarray):
            return None
        if kind == "bytes" and isinstance(value, (bytes, bytearray)):
            return None
        if isinstance(value, np.ndarray):
            return f"argument '{name}': expected {media}, got an {codec.NPY} array"
        if isinstance(value, bytes):
            return f"argument '{name}': expected {media}, got {codec.BYTES} bytes"
        return f"argument '{name}' is binary: send it in binary_args as {media}, not in args_json"

    def _describe(self, exc: pydantic.ValidationError) -> list[str]:
        problems = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            arg = str(loc[0]) if loc else "?"
            path = "".join(f"[{p!r}]" for p in loc[1:])
            if error["type"] == "missing" and not path:
                problems.append(f"missing required argument '{arg}'")
            elif error["type"] in ("extra_forbidden", "unexpected_keyword_argument") and path:
                problems.append(f"argument '{arg}'{path}: unknown field")
            elif error["type"] == "extra_forbidden":
                known = ", ".join(self.param_names) or "no arguments"
                problems.append(f"unknown argument '{arg}' ({self.name} takes: {known})")
            elif error["type"] == "finite_number":
                problems.append(f"argument '{arg}'{path}: a number beyond a float's range (floats are 64-bit)")
            else:
                got = error.get("input")
                shown = type(got).__name__ if isinstance(got, (np.ndarray, bytes)) else repr(got)[:80]
                problems.append(f"argument '{arg}'{path}: {error['msg']} (got {shown})")
        return problems


def _kind(fn: Callable[..., Any]) -> Kind:
    if inspect.isasyncgenfunction(fn):
        return "async_generator"
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return "function"


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    *, description: str | None = None, supports_streaming: bool | None = None, name: str | None = None
) -> Callable[[F], F]: ...


def tool(
    func: Callable[..., Any] | None = None,
    *,
    description: str | None = None,
    supports_streaming: bool | None = None,
    name: str | None = None,
) -> Any:
    """Mark an adapter method as a tool: a function, a generator, an ``async def`` or an async generator.

    ``supports_streaming`` defaults to whether the method is a (sync or async) generator function; a plain
    ``def`` may stream too when annotated to return an ``Iterator``. ``description`` defaults to the docstring's
    first paragraph, parameter descriptions to its ``Args:`` (or NumPy ``Parameters``) section.
    """

    def mark(fn: F) -> F:
        kind = _kind(fn)
        generator = kind in ("generator", "async_generator")
        streaming = generator if supports_streaming is None else supports_streaming
        where = f"tool {fn.__qualname__}"
        if generator and not streaming:
            raise TypeError(f"{where} is a generator: declare it with supports_streaming=True")
        if kind == "coroutine" and streaming:
            raise TypeError(
                f"{where} is an async def without yield, so it returns one value: drop supports_streaming=True,"
                " or yield its chunks (an async generator)"
            )
        doc = inspect.getdoc(fn) or ""
        info = {
            "name": name or fn.__name__,
            "description": description or doc.split("\n\n")[0],
            "streaming": streaming,
            "kind": kind,
        }
        setattr(fn, _TOOL_ATTR, info)
        return fn

    return mark(func) if func is not None else mark


def is_tool(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, _TOOL_ATTR)


_SYNC_ITERATORS = {abc.Iterator, abc.Iterable, abc.Generator}


def _result_type(where: str, kind: Kind, streaming: bool, hints: dict[str, Any]) -> Any:
    """The type of a unary tool's value, or of each streamed item."""
    if "return" not in hints:
        return Any
    returns = hints["return"]
    if not streaming:
        return returns
    item = yield_type(returns)
    if item is None:
        shown = _type_name(returns)
        raise TypeError(f"{where} streams, but is annotated to return {shown}: annotate it Iterator[...]")
    if kind == "function" and (typing.get_origin(returns) or returns) not in _SYNC_ITERATORS:
        shown = _type_name(returns)
        raise TypeError(f"{where} is a plain def marked streaming: it must return an Iterator, not {shown}")
    return item


def _field_error(where: str, fields: dict[str, Any], config: ConfigDict) -> str:
    """Which parameter pydantic could not handle, for the error message."""
    for name, field in fields.items():
        try:
            pydantic.create_model("probe", __config__=config, **{name: field}).model_json_schema()
        except Exception as exc:
            text = str(exc).strip().splitlines()[0]
            return f"{where}: parameter '{name}' has an unsupported type hint ({text})"
    return f"{where}: unsupported type hints"


def build_spec(func: Callable[..., Any]) -> ToolSpec:
    """Build the ToolSpec of a function marked with ``@tool`` (``self`` is skipped). Raises TypeError naming the
    tool for a definition Krait cannot serve."""
    info = getattr(func, _TOOL_ATTR)
    where = f"tool {func.__qualname__}"
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except NameError as exc:
        raise UnresolvedHint(f"{where}: a type hint names something undefined ({exc})") from None
    except Exception as exc:
        raise TypeError(f"{where}: cannot read its type hints ({exc})") from None
    signature = inspect.signature(func)
    descriptions = param_descriptions(func)
    fields: dict[str, Any] = {}
    json_fields: dict[str, Any] = {}
    binary: dict[str, str] = {}
    optional_binary: set[str] = set()
    context_param = None
    input_spec: InputSpec | None = None
    extra: Literal["forbid", "allow"] = "forbid"
    kind: Kind = info.get("kind", "function")
    first = next(iter(signature.parameters.values()), None)
    if first is None or first.name != "self" or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        # caught here, at import: called on the adapter instance, it would fail at every call ("got multiple
        # values for argument ...")
        got = "no parameter" if first is None else f"{first.name!r} first"
        raise TypeError(f"{where}: a tool is a method of its adapter: its first parameter must be self ({got})")
    for index, param in enumerate(signature.parameters.values()):
        if index == 0:
            continue
        annotation = hints.get(param.name, Any)
        if unwrap_optional(annotation) is ToolContext or (param.name in ("ctx", "context") and annotation is Any):
            context_param = param.name
            continue
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        found = _input_spec(where, kind, param.name, annotation)
        if found is not None:
            if input_spec is not None:
                raise TypeError(
                    f"{where}: parameters '{input_spec.param}' and '{param.name}' are both input streams;"
                    " a tool reads at most one"
                )
            input_spec = found
            continue
        if param.kind is param.VAR_POSITIONAL:
            raise TypeError(f"{where}: *{param.name} cannot be passed by name")
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"{where}: parameter '{param.name}' is positional-only; tools are called by name")
        annotation = compatible(annotation)
        default = ... if param.default is inspect.Parameter.empty else param.default
        field_info = Field(default, description=descriptions.get(param.name)) if param.name in descriptions else default
        if _has_description(annotation):
            field_info = default
        bkind = binary_kind(annotation)
        if bkind is not None:
            binary[param.name] = bkind
            if unwrap_optional(annotation) is not annotation or default is None:
                optional_binary.add(param.name)
            annotation = Annotated[annotation, WithJsonSchema(BINARY_SCHEMA[bkind])]
        else:
            json_fields[param.name] = (annotation, field_info)
        fields[param.name] = (annotation, field_info)
    # allow_inf_nan=False: JSON holds no NaN or Infinity, so a non-finite float here is an integer (or a
    # number) beyond a float's range that pydantic would round to inf: refused, naming the argument
    config = ConfigDict(strict=True, extra=extra, arbitrary_types_allowed=True, allow_inf_nan=False)
    try:
        model = pydantic.create_model(f"{info['name']}_args", __config__=config, **fields)
        json_model = pydantic.create_model(f"{info['name']}_json_args", __config__=config, **json_fields)
        model.model_json_schema()
    except Exception:
        raise TypeError(_field_error(where, fields, config)) from None
    try:
        result = result_schema(_result_type(where, kind, info["streaming"], hints))
    except TypeError as exc:
        message = str(exc)
        raise TypeError(message if message.startswith(where) else f"{where}: {message}") from None
    return ToolSpec(
        name=info["name"],
        description=info["description"],
        supports_streaming=info["streaming"],
        func=func,
        context_param=context_param,
        binary_params=binary,
        model=model,
        param_names=tuple(fields),
        json_model=json_model,
        is_async=kind in ("coroutine", "async_generator"),
        result_schema=result,
        optional_binary=frozenset(optional_binary),
        input=input_spec,
        fast_args=FastArgs.from_model(json_model) if not binary else None,
    )


_SYNC_INPUTS = (abc.Iterator, abc.Iterable)
_ASYNC_INPUTS = (abc.AsyncIterator, abc.AsyncIterable)
# strict like the arguments (see the module doc): "3" is not an int; no NaN or infinity in JSON
_ITEM_CONFIG = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


def _input_spec(where: str, kind: Kind, name: str, annotation: Any) -> InputSpec | None:
    """The input stream a parameter annotated ``Iterator[T]`` / ``AsyncIterator[T]`` declares, else None."""
    origin = typing.get_origin(annotation) or annotation
    is_sync, is_async = origin in _SYNC_INPUTS, origin in _ASYNC_INPUTS
    if not (is_sync or is_async):
        return None
    if is_async and kind not in ("coroutine", "async_generator"):
        raise TypeError(
            f"{where}: parameter '{name}' is an AsyncIterator, which only async def tools read: use Iterator[...]"
        )
    if is_sync and kind in ("coroutine", "async_generator"):
        raise TypeError(
            f"{where}: parameter '{name}' is an Iterator, which would block the event loop of an async tool:"
            " use AsyncIterator[...]"
        )
    args = typing.get_args(annotation)
    item = compatible(args[0]) if args else Any
    kinds = {binary_kind(member) for member in _union_members(item)}
    if kinds == {"npy"}:
        return InputSpec(name, item, "npy", dict(BINARY_SCHEMA["npy"]), None)
    if kinds == {"bytes"}:
        return InputSpec(name, item, "bytes", dict(BINARY_SCHEMA["bytes"]), None)
    if kinds == {"npy", "bytes"}:
        schema = {"anyOf": [BINARY_SCHEMA["npy"], BINARY_SCHEMA["bytes"]], "x-krait-binary": True}
        return InputSpec(name, item, "binary", schema, None)
    if kinds - {None}:
        raise TypeError(f"{where}: input items of '{name}' mix binary and JSON types; stream one or the other")
    if item is Any:
        return InputSpec(name, item, "json", {}, None)
    try:
        config = None if isinstance(item, type) and issubclass(item, pydantic.BaseModel) else _ITEM_CONFIG
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(item, config=config)
        list_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(list[item], config=_ITEM_CONFIG)  # type: ignore[valid-type]
        schema = adapter.json_schema()
    except Exception as exc:
        raise TypeError(
            f"{where}: the input items of '{name}' have an unsupported type ({str(exc).strip().splitlines()[0]})"
        ) from None
    return InputSpec(name, item, "json", schema, adapter, list_adapter)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _has_description(annotation: Any) -> bool:
    if typing.get_origin(annotation) is not Annotated:
        return False
    return any(getattr(m, "description", None) for m in annotation.__metadata__)


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else repr(annotation).replace("typing.", "")
