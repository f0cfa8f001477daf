"""Decoding requests: a request that does not parse is refused with INVALID_ARGUMENT naming the field.

grpcio's own handling of a request its deserializer cannot parse is an INTERNAL status, "Exception deserializing
request!", and a logged traceback, for what is only bad input (invalid UTF-8 in a string field is the usual
case: protobuf refuses it in proto3 strings). Here the deserializer never raises: it returns a
:class:`Malformed` that the handler refuses. Protobuf's error does not say which field is wrong, so the wire
format is walked (only on this rare path) to find it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from .wire import read_varint, skip_field


class Malformed:
    """A request that did not parse; ``reason`` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def deserializer(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer for grpcio that returns :class:`Malformed` instead of raising."""
    parse = message_class.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return Malformed(explain(message_class.DESCRIPTOR, data))

    return deserialize


def explain(descriptor: Descriptor, data: bytes) -> str:
    """Why ``data`` is not a valid ``descriptor`` message: the first string field that is not UTF-8, when
    there is one."""
    try:
        field = _bad_utf8(descriptor, memoryview(data), "")
    except (IndexError, ValueError):  # truncated or otherwise broken wire format
        field = None
    if field is not None:
        return f"field {field} of {descriptor.full_name} is not valid UTF-8"
    return f"the request is not a valid {descriptor.full_name} (malformed protobuf)"


def _bad_utf8(descriptor: Descriptor, buf: memoryview, prefix: str) -> str | None:
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type != 2:
            pos = skip_field(buf, pos, wire_type)
            continue
        size, pos = read_varint(buf, pos)
        value, pos = buf[pos : pos + size], pos + size
        if pos > end:
            raise ValueError("truncated")
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue
        name = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                str(value, "utf-8")
            except UnicodeDecodeError:
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            found = _bad_utf8(field.message_type, value, name + ".")
            if found is not None:
                return found
    return None
