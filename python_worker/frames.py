"""DataFrames on the wire: a pandas DataFrame (or a pyarrow Table) travels as an Arrow IPC stream.

Content type ``application/vnd.apache.arrow.stream`` (the IANA-registered type of Arrow's streaming IPC
format): columnar, typed, and read by every Arrow implementation (pyarrow, arrow-js, Rust arrow, Explorer in
Elixir) without a row-by-row conversion. pyarrow writes and reads it; it is an optional dependency (the
``dataframes`` extra), imported only when a DataFrame is sent or received.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

ARROW = "application/vnd.apache.arrow.stream"
_MISSING_PYARROW = "DataFrames travel as Arrow IPC streams, which needs pyarrow: pip install 'krait[dataframes]'"


def is_frame(value: Any) -> bool:
    """A pandas DataFrame or a pyarrow Table (checked by type name: neither library is imported here)."""
    cls = type(value)
    module = cls.__module__
    return (cls.__name__ == "DataFrame" and module.startswith("pandas")) or (
        cls.__name__ == "Table" and module.startswith("pyarrow")
    )


def _pyarrow() -> Any:
    # imported by name: an optional dependency, used untyped (so type checkers need no pyarrow stubs)
    try:
        importlib.import_module("pyarrow.ipc")
        return importlib.import_module("pyarrow")
    except ImportError:
        raise ImportError(_MISSING_PYARROW) from None


def encode_frame(value: Any) -> bytes:
    """The Arrow IPC stream of a DataFrame (its index kept as pandas metadata) or a pyarrow Table."""
    pa = _pyarrow()
    table = value if isinstance(value, pa.Table) else pa.Table.from_pandas(value)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def decode_frame(data: bytes | memoryview) -> Any:
    """A pandas DataFrame from an Arrow IPC stream (a pyarrow Table when pandas is not installed)."""
    pa = _pyarrow()
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    return table.to_pandas() if importlib.util.find_spec("pandas") is not None else table
