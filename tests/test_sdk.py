"""The SDK on its own: the @tool decorator's rules and argument validation."""

from __future__ import annotations

import pydantic
import pytest

from python_worker import BaseAdapter, tool


def test_generator_without_streaming_flag_is_refused() -> None:
    with pytest.raises(TypeError, match="is a generator: declare it with supports_streaming=True"):

        class Bad(BaseAdapter):
            @tool(supports_streaming=False)
            def gen(self):
                yield 1


def test_a_tool_without_self_is_refused_at_import_not_at_every_call() -> None:
    with pytest.raises(
        TypeError,
        match=r"tool .*add: a tool is a method of its adapter: its first parameter must be self \('a' first\)",
    ):

        class NoSelf(BaseAdapter):
            @tool
            def add(a: float, b: float) -> float:  # type: ignore[misc]  # the mistake under test
                return a + b

    with pytest.raises(TypeError, match=r"its first parameter must be self \(no parameter\)"):

        class Nothing(BaseAdapter):
            @tool
            def ping() -> str:  # type: ignore[misc]
                return "pong"


def test_description_defaults_to_docstring_and_streaming_to_generator() -> None:
    class A(BaseAdapter):
        @tool
        def numbers(self, n: int = 3):
            """Count to n.

            More text."""
            yield from range(n)

    spec = A.tool_specs()["numbers"]
    assert spec.supports_streaming and spec.description == "Count to n."


class _Options(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    frequency_hz: float = 440.0


class _NestedAdapter(BaseAdapter):
    @tool
    def f(self, opts: _Options) -> None:
        pass


def test_unknown_nested_field_names_the_field() -> None:
    from python_worker.sdk.tool import ArgumentError

    with pytest.raises(ArgumentError) as info:
        _NestedAdapter.tool_specs()["f"].validate({"opts": {"freq": 1}})
    assert str(info.value) == "f: argument 'opts'['freq']: unknown field"
