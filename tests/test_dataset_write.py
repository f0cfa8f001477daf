"""write_rows through a real worker (the Python Client's ``input=``, ExecuteToolDuplex): rows streamed in come back
unchanged through the reading tool (stream_file) or the file itself, paths outside KRAIT_DATA_ROOT (``..``,
absolute, through a link) are refused, an existing file is kept unless overwrite=True, and a write that fails
midway leaves no file behind."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from python_worker.client import Client, KraitError

from .workers import running_worker

ADAPTER = "adapters.dataset:DatasetAdapter"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("write")
    (base / "root" / "sub").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "root" / "out").symlink_to(base / "outside")  # a link inside the root, pointing out of it
    return base / "root"


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[Client]:
    with running_worker(ADAPTER, env={"KRAIT_DATA_ROOT": str(root)}) as worker, Client(worker.target, timeout=30) as c:
        yield c


def write(client: Client, rows: Any, **args: Any) -> dict[str, Any]:
    return client.call("write_rows", args, input=rows)


def test_csv_rows_round_trip_through_stream_file(client: Client, root: Path) -> None:
    rng = np.random.default_rng(3)
    table = rng.normal(size=(2500, 3))
    rows = ({"a": float(r[0]), "b": float(r[1]), "c": float(r[2])} for r in table)  # a generator, pulled lazily
    result = write(client, rows, path="sub/table.csv")
    size = (root / "sub" / "table.csv").stat().st_size
    assert result == {"rows": 2500, "bytes": size, "path": "sub/table.csv", "format": "csv"}

    chunks = list(client.stream("stream_file", {"path": "sub/table.csv", "chunk_rows": 1000}))
    assert json.loads(chunks[0].metadata["columns"]) == ["a", "b", "c"]
    back = np.concatenate([c.data for c in chunks if isinstance(c.data, np.ndarray)])
    np.testing.assert_array_equal(back, table)  # floats written with repr: exact


def test_jsonl_rows_round_trip(client: Client, root: Path) -> None:
    rows = [{"i": i, "name": f"row {i} ü", "tags": ["x"] * (i % 3), "nested": {"ok": i % 2 == 0}} for i in range(50)]
    result = write(client, iter(rows), path="rows.jsonl")
    assert result["rows"] == 50 and result["path"] == "rows.jsonl" and result["format"] == "jsonl"
    text = (root / "rows.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert result["bytes"] == len(text.encode())


def test_csv_cells_keep_text_booleans_and_nulls(client: Client, root: Path) -> None:
    write(client, iter([{"id": 1, "note": 'say "hi", then go', "ok": True, "x": None}]), path="cells.csv")
    assert (root / "cells.csv").read_text() == 'id,note,ok,x\n1,"say ""hi"", then go",true,\n'


@pytest.mark.parametrize(
    "path", ["../escape.csv", "/etc/krait-escape.csv", "out/through-link.csv", "sub/../../escape.csv"]
)
def test_a_path_outside_the_root_is_refused(client: Client, root: Path, path: str) -> None:
    with pytest.raises(KraitError) as info:
        write(client, iter([{"a": 1}]), path=path)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.type == "PathNotAllowedError"
    assert "outside the data root" in info.value.message and str(root) not in info.value.message
    assert not list((root.parent / "outside").iterdir()) and not (root.parent / "escape.csv").exists()


def test_an_existing_file_is_refused_unless_overwrite(client: Client, root: Path) -> None:
    write(client, iter([{"v": 1}]), path="keep.jsonl")
    with pytest.raises(KraitError) as info:
        write(client, iter([{"v": 2}]), path="keep.jsonl")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.type == "FileExistsError"
    assert "overwrite=true" in info.value.message
    assert (root / "keep.jsonl").read_text() == '{"v": 1}\n'
    # refused before any row is read: an endless input is not waited for
    endless = ({"v": i} for i in itertools.count())
    with pytest.raises(KraitError) as info:
        client.call("write_rows", {"path": "keep.jsonl"}, input=endless, timeout=10)
    assert info.value.type == "FileExistsError"
    write(client, iter([{"v": 3}]), path="keep.jsonl", overwrite=True)
    assert (root / "keep.jsonl").read_text() == '{"v": 3}\n'

    # a link at the name is replaced, never written through
    (root / "link.jsonl").symlink_to(root.parent / "outside" / "target.jsonl")
    write(client, iter([{"v": 4}]), path="link.jsonl", overwrite=True)
    assert not (root / "link.jsonl").is_symlink() and not (root.parent / "outside" / "target.jsonl").exists()


def test_a_bad_row_names_the_item_and_leaves_no_file(client: Client, root: Path) -> None:
    rows = [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 5}]
    with pytest.raises(KraitError) as info:
        write(client, iter(rows), path="sub/bad.csv")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "write_rows: input item 2: its keys differ" in info.value.message
    with pytest.raises(KraitError) as info:
        write(client, iter([{"a": 1}, {"a": {"deep": 1}}]), path="sub/bad.csv")
    assert "write_rows: input item 1: column 'a' holds a dict" in info.value.message
    with pytest.raises(KraitError) as info:
        write(client, iter([{"a": 1}, [1, 2]]), path="sub/bad.jsonl")
    assert "write_rows: input item 1: " in info.value.message  # not an object: refused by the engine
    assert not [n for n in os.listdir(root / "sub") if n.startswith(".krait-write-") or n.startswith("bad")]


def test_writing_needs_a_data_root(tmp_path: Path) -> None:
    with (
        running_worker(ADAPTER, env={"KRAIT_DATA_ROOT": None}) as worker,
        Client(worker.target, timeout=30) as c,
        pytest.raises(KraitError) as info,
    ):
        write(c, iter([{"a": 1}]), path=str(tmp_path / "x.csv"))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "KRAIT_DATA_ROOT" in info.value.message
    assert not (tmp_path / "x.csv").exists()
