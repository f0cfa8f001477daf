"""Payload encoding by content type: every value crossing the wire says what it is.

- ``application/json``: dicts, lists, numbers, strings, bools and None. orjson encodes (fast, and it turns NumPy
  scalars into plain numbers); integers beyond 64 bits, which orjson refuses, fall back to the standard library so
  they stay exact. JSON has no NaN or Infinity, and a ``null`` in their place would pass for "no value": a
  non-finite float anywhere in a value (NumPy scalars and arrays inside it too) is refused with
  :class:`NonFiniteError` naming where it is (the engine ends the call with ``FAILED_PRECONDITION``). Finding it
  costs nothing on the usual path: orjson writes NaN as ``null``, so the value is searched only when its JSON
  holds a ``null``.
  Decoding is strict and the same whichever parser runs: NaN, Infinity, numbers beyond a double's range, lone
  surrogates and nesting deeper than about a thousand levels are errors (:class:`JSONValueError` names where).
- ``application/x-npy``: NumPy arrays in the standard ``.npy`` format (magic, header with dtype and shape, raw
  bytes), so any language with an npy reader decodes them. The header is written by hand because
  ``numpy.lib.format.write_array`` wants a file object and would copy the buffer twice; decoding parses the
  header with NumPy's own reader and maps the data with ``np.frombuffer`` (no copy).
- ``application/octet-stream``: raw bytes. ``text/plain; charset=utf-8``: text (only when asked for explicitly).
- ``application/vnd.apache.arrow.stream``: a pandas DataFrame or pyarrow Table as an Arrow IPC stream
  (:mod:`python_worker.frames`).

JSON values beyond JSON's own types take pydantic's JSON forms, the ones the tools' result schemas describe:
dataclasses and pydantic models are objects (by alias), ``datetime``/``date``/``time`` ISO 8601 strings,
``UUID`` strings, ``Enum`` members their values, ``Decimal`` a string of its exact digits (``"12.50"``: a JSON
number would pass through a float in most readers), sets and tuples arrays, NumPy scalars numbers.

Nothing is ever pickled.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np
import orjson
import pydantic_core

from .frames import ARROW, decode_frame, encode_frame, is_frame

JSON = "application/json"
NPY = "application/x-npy"
BYTES = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"

_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# orjson reads integers beyond 64 bits as floats; a run of 19+ digits sends a document to the exact (slower)
# standard-library parser instead
_LONG_DIGITS = re.compile(rb"\d{19}")


class EncodeError(TypeError):
    """A value cannot be put on the wire (an unsupported type, or a value JSON cannot hold)."""


class NonFiniteError(EncodeError):
    """A value holds NaN or an infinity, which JSON cannot; ``path`` is where (keys and indices from the top)."""

    def __init__(self, path: tuple[str | int, ...], number: Any) -> None:
        self.path, self.number = path, number
        self.where = "".join(f"[{p!r}]" for p in path)  # ['loss'][2]: appended to what the value is
        super().__init__(f"{self.where or 'the value'} is {number!r}, {NON_FINITE_RULE}")


NON_FINITE_RULE = "not a finite number: JSON has no NaN or Infinity (send None, or a string, for it)"


def _json_fallback(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    try:  # pydantic models, Decimal, timedelta, ...: pydantic's JSON form
        return pydantic_core.to_jsonable_python(value, by_alias=True)
    except pydantic_core.PydanticSerializationError:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable") from None


def encode_json(value: Any) -> bytes:
    """Encode ``value`` as JSON; big integers stay exact. Raises :class:`EncodeError` (:class:`NonFiniteError`
    for NaN or an infinity, naming where) for what JSON cannot hold."""
    try:
        data: bytes = orjson.dumps(value, default=_json_fallback, option=_ORJSON_OPTS)
    except orjson.JSONEncodeError as exc:
        if "Integer exceeds 64-bit range" not in str(exc):
            raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None
    else:
        # 110 (an "n") first: a byte search is ~10x cheaper than a substring one, and most values have no "n"
        if 110 in data and b"null" in data and (found := first_non_finite(value)) is not None:
            raise NonFiniteError(*found)
        return data
    try:
        return json.dumps(value, default=_json_fallback, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        if (found := first_non_finite(value)) is not None:
            raise NonFiniteError(*found) from None
        raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None


def first_non_finite(value: Any) -> tuple[tuple[str | int, ...], Any] | None:
    """The path to the first NaN or infinity in ``value`` (as :func:`encode_json` would write it: dicts, lists,
    tuples, sets, NumPy scalars and arrays, and whatever pydantic turns into those), and the number itself."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, (str, bytes, int, type(None))):
            continue
        if isinstance(item, (float, np.floating, np.complexfloating)):
            if not np.isfinite(item):
                return path, item.item() if isinstance(item, np.generic) else item
        elif isinstance(item, np.ndarray):
            if item.dtype.kind in "fc" and not (finite := np.isfinite(item)).all():
                index = tuple(int(i) for i in np.argwhere(~finite)[0])
                return (*path, *index), item[index].item()
        elif isinstance(item, dict):
            stack.extend(((*path, str(key)), child) for key, child in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, (set, frozenset)):
            stack.extend(((*path, i), child) for i, child in enumerate(item))
        elif not isinstance(item, np.generic):
            try:  # a dataclass, a pydantic model, an Enum...: walk the form it is written in
                plain = _json_fallback(item)
            except Exception:
                continue
            if plain is not item:
                stack.append((path, plain))
    return None


class JSONValueError(ValueError):
    """A JSON document holds a value Krait refuses (a non-finite number, a lone surrogate); ``path`` is where:
    the keys and indices from the top of the document."""

    def __init__(self, path: tuple[str | int, ...], problem: str) -> None:
        super().__init__(f"{format_path(path) or 'the document'}: {problem}")
        self.path = path
        self.problem = problem


def format_path(path: tuple[str | int, ...]) -> str:
    """``('opts', 'k', 2)`` as ``'opts'['k'][2]``."""
    return "".join(repr(p) if i == 0 else f"[{p!r}]" for i, p in enumerate(path))


# \ud800-\udfff escapes: the only way a lone surrogate gets into a document the standard library parses
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_NON_FINITE = "not a finite number (JSON has no NaN or Infinity; numbers beyond a double's range are refused)"


def decode_json(data: bytes | str) -> Any:
    """Parse JSON; integers stay exact whatever their size. Raises ValueError (:class:`JSONValueError` when a
    value is refused, naming where) for anything orjson would refuse, whichever parser runs."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not _LONG_DIGITS.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _explain(raw, exc) from None
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise _explain(raw, exc) from None
    if _SURROGATE_ESCAPE.search(raw) and (found := _first_refused(value)) is not None:
        raise JSONValueError(*found)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is beyond a double's range")
    return value


_NOTHING = object()


def _explain(raw: bytes, error: BaseException) -> ValueError:
    """The error for a refused document: where the refused value is when a lenient parse finds one, else the
    parser's own message."""
    try:
        lenient = json.loads(raw)
    except RecursionError:
        return ValueError("JSON nesting is too deep")
    except ValueError:
        lenient = _NOTHING
    if lenient is not _NOTHING and (found := _first_refused(lenient)) is not None:
        return JSONValueError(*found)
    if isinstance(error, RecursionError):
        return ValueError("JSON nesting is too deep")
    return ValueError(str(error))


def _first_refused(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The path to the first non-finite number or lone surrogate in a parsed document, and what it is (walked
    with a stack: documents nest deeper than Python recursion allows)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path, _NON_FINITE
        elif isinstance(item, str):
            if not is_utf8(item):
                return path, "a lone surrogate (\\ud800-\\udfff) is not text"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if not is_utf8(key):
                    return path, "a key holds a lone surrogate (\\ud800-\\udfff)"
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(item))))
    return None


def is_utf8(text: str) -> bool:
    """``text`` encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def npy_header(array: np.ndarray) -> bytes:
    """The .npy v1.0 header for ``array`` (C order), padded so the data starts 64-byte aligned."""
    descr = np.lib.format.dtype_to_descr(array.dtype)
    shape = array.shape
    shape_text = "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape_text}, }}"
    # magic(6) + version(2) + length(2) + header + padding + "\n" is a multiple of 64
    pad = 64 - (10 + len(header) + 1) % 64
    return b"\x93NUMPY\x01\x00" + (len(header) + pad + 1).to_bytes(2, "little") + header.encode() + b" " * pad + b"\n"


def npy_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """The .npy header and a view of the array's bytes (no copy unless the array is not C-contiguous):
    whoever joins them makes the one copy of the data."""
    if array.dtype.hasobject:
        raise EncodeError("arrays of Python objects cannot be sent (that would need pickle)")
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return npy_header(array), array.reshape(-1).view(np.uint8).data


def encode_npy(array: np.ndarray) -> bytes:
    """Encode an array as .npy bytes: one copy of the data, straight into the result."""
    # join copies the array's buffer straight into the result: one copy, no tobytes() intermediate
    return b"".join(npy_parts(array))


def decode_npy(data: bytes | memoryview) -> np.ndarray:
    """Decode .npy bytes; the array is a read-only view of ``data`` (no copy). Any malformed payload raises
    ValueError saying what is wrong."""
    buf = memoryview(data).cast("B")
    # the header's length is in the preamble: version 1 has 2 bytes of it, versions 2 and 3 have 4
    size = 10 if bytes(buf[6:7]) == b"\x01" else 12
    header_end = size + int.from_bytes(buf[size - (2 if size == 10 else 4) : size], "little")
    stream = io.BytesIO(buf[: min(len(buf), header_end)].tobytes())
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except Exception as exc:
        # NumPy parses the header with the tokenizer and ast.literal_eval: a malformed one raises whatever they
        # raise (TokenError, SyntaxError, OverflowError, RecursionError, ...), and every one means the same here
        raise ValueError(f"not a valid .npy payload: {type(exc).__name__}: {str(exc)[:200]}") from None
    if dtype.hasobject:
        raise ValueError(f".npy payload of dtype {dtype}: arrays of Python objects cannot be received (no pickle)")
    if any(n < 0 for n in shape):
        raise ValueError(f".npy payload has a negative dimension in its shape {shape}")
    offset = stream.tell()
    count = math.prod(shape)  # exact: NumPy's prod would wrap around on a huge shape
    have, need = len(buf) - offset, count * dtype.itemsize
    if have != need:
        raise ValueError(f".npy payload holds {have} data bytes, its header {shape} {dtype} needs {need}")
    array = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


# what an .npy argument may hold: bools, integers, floats, complex, bytes and text strings, datetimes and
# durations; void and structured records (kind "V") are refused, as no tool's arithmetic expects them
ARGUMENT_DTYPE_KINDS = "biufcSUMm"


def check_argument_dtype(array: np.ndarray) -> None:
    """Raise ValueError naming ``array``'s dtype if a tool may not receive it as an argument."""
    dtype = array.dtype
    if dtype.kind not in ARGUMENT_DTYPE_KINDS:
        what = "structured records" if dtype.names else "void (raw bytes)" if dtype.kind == "V" else "unsupported"
        raise ValueError(
            f"dtype {str(dtype)[:120]} ({what}) is not supported; send numbers, bools or strings"
            " (raw bytes as application/octet-stream)"
        )


def encode_value(value: Any, content_type: str | None = None) -> tuple[bytes, str]:
    """Encode a tool's value; the content type follows the value unless one is given."""
    if content_type is None:
        if isinstance(value, np.ndarray):
            return encode_npy(value), NPY
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value), BYTES
        if is_frame(value):
            return encode_frame(value), ARROW
        return encode_json(value), JSON
    if content_type == ARROW:
        return encode_frame(value), ARROW
    if content_type == NPY:
        return encode_npy(np.asarray(value)), NPY
    if content_type == JSON:
        return encode_json(value), JSON
    if content_type.startswith("text/"):
        if not isinstance(value, str):
            raise EncodeError(f"content type {content_type} needs a str, got {type(value).__name__}")
        return value.encode(), content_type
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), content_type
    raise EncodeError(f"content type {content_type} needs bytes, got {type(value).__name__}")


def decode_value(data: bytes | memoryview, content_type: str) -> Any:
    """Decode a payload by its content type (the inverse of :func:`encode_value`). An array decoded from a
    memoryview aliases it; any other value is independent of the memoryview."""
    if content_type == NPY:
        return decode_npy(data)
    if content_type == ARROW:
        return decode_frame(data)
    if isinstance(data, memoryview):
        data = data.tobytes()
    if content_type == JSON:
        return decode_json(data) if data else None
    if content_type.startswith("text/"):
        return bytes(data).decode()
    if content_type == "" and not data:
        return None
    return bytes(data)
