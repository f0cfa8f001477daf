"""ListTools' schemas as MCP tools: the same input schema and description; an output schema built around the
result's schema from the tool's return annotation.

MCP wants an output schema of type ``object`` whose instances are the call's ``structuredContent``. A Krait
result is any JSON value (``add`` returns a number), so a unary tool's structured content is the HTTP front's
answer, ``{"result", "content_type", "metadata"}``, and its output schema describes that object with the
result's schema under ``result``. A streaming tool's is the stream's summary (:mod:`.results`), whose chunks'
``data`` follow the same schema. Binary values (NumPy arrays, bytes) travel as the JSON forms the HTTP front
uses (``{"dtype", "shape", "base64"}``, ``{"base64"}``), so their schemas say that instead of the annotation's
``x-krait-binary`` string.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from ...codec import NPY
from ...engine import Engine

_METADATA = {"type": "object", "additionalProperties": {"type": "string"}}
_BASE64 = {"type": "string", "contentEncoding": "base64"}


def value_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The schema of a value as MCP carries it (``{}``: any value)."""
    if schema is None:
        return {}
    if schema.get("x-krait-binary"):
        if schema.get("contentMediaType") == NPY:
            return {
                "type": "object",
                "properties": {
                    "dtype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "base64": _BASE64,
                },
                "required": ["dtype", "shape", "base64"],
            }
        return {"type": "object", "properties": {"base64": _BASE64}, "required": ["base64"]}
    return schema


def chunk_schema(data: dict[str, Any]) -> dict[str, Any]:
    """A chunk's JSON (the HTTP front's): ``{"seq", "content_type", "data", "metadata"}``."""
    return {
        "type": "object",
        "properties": {
            "seq": {"type": "integer"},
            "content_type": {"type": "string"},
            "data": data,
            "metadata": _METADATA,
        },
        "required": ["seq", "content_type", "data", "metadata"],
    }


def unary_output_schema(result: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"result": value_schema(result), "content_type": {"type": "string"}, "metadata": _METADATA},
        "required": ["result", "content_type", "metadata"],
    }


def stream_output_schema(result: dict[str, Any] | None) -> dict[str, Any]:
    data = value_schema(result)
    return {
        "type": "object",
        "properties": {
            "chunk_count": {"type": "integer", "description": "chunks before the final one"},
            "chunks": {
                "type": "array",
                "items": chunk_schema({}),  # a tool's progress events (ctx.progress) are chunks of their own form
                "description": "the chunks, when they were not sent as progress (no progress token)",
            },
            "omitted_chunks": {"type": "integer", "description": "the oldest chunks left out of `chunks`"},
            "final": chunk_schema({"anyOf": [data, {"type": "null"}]} if data else {}),
        },
        "required": ["chunk_count", "final"],
    }


def mcp_tools(engine: Engine) -> list[types.Tool]:
    """Every tool of the engine, from ListTools' own answer (sorted by name)."""
    tools = []
    for info in engine.list_tools().tools:
        result = json.loads(info.result_schema_json) if info.result_schema_json else None
        output = stream_output_schema(result) if info.supports_streaming else unary_output_schema(result)
        tools.append(
            types.Tool(
                name=info.name,
                description=info.description,
                input_schema=with_input(json.loads(info.parameters_schema_json), info),
                output_schema=output,
                meta={"krait/streaming": info.supports_streaming},
            )
        )
    return tools


def with_input(parameters: dict[str, Any], info: Any) -> dict[str, Any]:
    """A tool that reads an input stream takes it here whole, as a JSON array under its parameter's name (MCP has
    no stream into a tool); binary items cannot travel in MCP's JSON, so such a tool keeps its schema as is."""
    if not info.input_param:
        return parameters
    item = json.loads(info.input_schema_json) if info.input_schema_json else {}
    if item.get("x-krait-binary"):
        return parameters
    description = "the tool's input stream, given whole: one array element per item"
    parameters.setdefault("properties", {})[info.input_param] = {
        "type": "array",
        "items": item,
        "description": description,
    }
    parameters["required"] = [*parameters.get("required", []), info.input_param]
    return parameters
