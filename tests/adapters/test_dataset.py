"""adapters.dataset: seeded batches equal a local draw exactly, files stream back unchanged in batches, bad input
is named, paths are confined by KRAIT_DATA_ROOT, and a cancelled stream leaves no file open in the worker."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from adapters.dataset.csv_reader import CsvFormatError, CsvRows
from adapters.dataset.npy_reader import NpyRows
from adapters.dataset.synthetic import generate_batches
from python_worker.client import Chunk, Client, KraitError

from ..support import eventually
from ..workers import Worker, running_worker

PROMPT = 2.0  # "promptly": cancellation bounds, not speed targets


def _local_draw(rows: int, columns: int, seed: int, dtype: str, distribution: str) -> np.ndarray:
    """The documented recipe, written out independently of the adapter."""
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        return rng.integers(0, 1_000_000, (rows, columns), dtype=dtype)
    if distribution == "normal":
        return rng.standard_normal((rows, columns), dtype=dtype)
    return rng.random((rows, columns), dtype=dtype)


# -- kernels, in process ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "distribution"), [("float32", "normal"), ("float64", "uniform"), ("int32", "uniform"), ("int64", None)]
)
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_batches_are_one_draw_whatever_the_chunk_size(dtype: str, distribution: str | None, chunk_size: int) -> None:
    batches = list(generate_batches(103, chunk_size, 5, 42, dtype, distribution))
    assert [offset for offset, _ in batches] == list(range(0, 103, chunk_size))
    whole = np.concatenate([b for _, b in batches])
    assert whole.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(whole, _local_draw(103, 5, 42, dtype, distribution or "uniform"))


@pytest.mark.parametrize(
    "array",
    [
        np.arange(60, dtype=np.int16).reshape(10, 3, 2),
        np.asfortranarray(np.arange(35, dtype=np.float64).reshape(7, 5)),
        np.array([(1, 2.5), (3, 4.5), (5, 6.5)], dtype=[("id", "<i4"), ("x", "<f8")]),
        np.array(3.25),
        np.zeros((0, 4), dtype=np.uint8),
    ],
    ids=["3d-int16", "fortran", "structured", "0d", "empty"],
)
def test_npy_reader_returns_the_rows_in_batches(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "a.npy"
    np.save(path, array)
    with NpyRows(path) as npy:
        batches = list(npy.batches(3))
    if array.ndim == 0:
        assert len(batches) == 1 and batches[0][1] == array
        return
    assert [offset for offset, _ in batches] == list(range(0, len(array), 3))
    assert all(b.flags.c_contiguous for _, b in batches)
    got = np.concatenate([b for _, b in batches]) if batches else np.empty((0, *array.shape[1:]), array.dtype)
    np.testing.assert_array_equal(got, array)
    assert got.dtype == array.dtype


def test_npy_reader_names_bad_files(tmp_path: Path) -> None:
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy: holds Python objects"):
        NpyRows(objects)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.arange(100.0))
    truncated.write_bytes(truncated.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"truncated\.npy: truncated"):
        NpyRows(truncated)
    text = tmp_path / "text.npy"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npy: not a \.npy file"):
        NpyRows(text)


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_csv_reader_header_blank_and_comment_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, "# made by hand\r\nx, y ,z\r\n1,2,3\r\n\r\n4.5,-5,6e2\r\n# note\r\n7,8,9\r\n")
    with CsvRows(path) as rows:
        assert rows.columns == ["x", "y", "z"]
        batches = list(rows.batches(2))
    assert [(o, b.shape) for o, b in batches] == [(0, (2, 3)), (2, (1, 3))]
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), [[1, 2, 3], [4.5, -5, 600], [7, 8, 9]])


def test_csv_reader_without_header_and_with_a_forced_one(tmp_path: Path) -> None:
    path = _csv(tmp_path, "1;2\n3;4\n")
    with CsvRows(path, delimiter=";") as rows:
        assert rows.columns is None
        np.testing.assert_array_equal(next(rows.batches(10))[1], [[1, 2], [3, 4]])
    with CsvRows(path, delimiter=";", header=True) as rows:
        assert rows.columns == ["1", "2"]
        np.testing.assert_array_equal(next(rows.batches(10))[1], [[3, 4]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3,x\n", r"t\.csv:3, column 2: not a number$"),  # never the text found there
        ("1,2\n3,4\n5,6\n7\n", r"t\.csv:4: 1 fields, expected 2$"),
        ("1,2\n3,4,5\n", r"t\.csv:2: 3 fields, expected 2$"),
        ("1,2\n\n3,\n", r"t\.csv:3, column 2: not a number$"),
    ],
)
def test_csv_reader_names_the_bad_line(tmp_path: Path, text: str, message: str) -> None:
    with CsvRows(_csv(tmp_path, text)) as rows, pytest.raises(CsvFormatError, match=message):
        list(rows.batches(2))


# -- through a worker ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_worker() -> Iterator[Worker]:
    with running_worker("adapters.dataset:DatasetAdapter") as w:
        yield w


@pytest.fixture
def client(dataset_worker: Worker) -> Iterator[Client]:
    with Client(dataset_worker.target, timeout=60) as c:
        yield c


def _check_totals(final: Chunk, rows: int, nbytes: int, chunks: int) -> None:
    assert final.is_final and "synthetic_final" not in final.metadata
    assert (final.data["rows"], final.data["bytes"], final.data["chunks"]) == (rows, nbytes, chunks)
    assert (final.metadata["rows"], final.metadata["bytes"], final.metadata["chunks"]) == tuple(
        str(n) for n in (rows, nbytes, chunks)
    )


@pytest.mark.parametrize(
    ("dtype", "distribution"), [("float32", None), ("float64", "uniform"), ("int32", None), ("int64", "uniform")]
)
def test_generate_dataset_equals_a_local_draw(client: Client, dtype: str, distribution: str | None) -> None:
    args = {"rows": 25_000, "chunk_size": 4096, "columns": 10, "seed": 7, "dtype": dtype}
    if distribution:
        args["distribution"] = distribution
    chunks = list(client.stream("generate_dataset", args))
    batches, final = chunks[:-1], chunks[-1]
    assert len(batches) == 7 and all(c.content_type == "application/x-npy" for c in batches)
    assert [c.metadata["offset"] for c in batches] == [str(o) for o in range(0, 25_000, 4096)]
    assert [c.metadata["rows"] for c in batches] == ["4096"] * 6 + [str(25_000 - 6 * 4096)]
    data = np.concatenate([c.data for c in batches])
    expected = _local_draw(25_000, 10, 7, dtype, "normal" if dtype == "float32" else "uniform")
    assert data.dtype == expected.dtype
    np.testing.assert_array_equal(data, expected)  # exact, bit for bit
    _check_totals(final, 25_000, expected.nbytes, 7)
    assert final.data["dtype"] == dtype and final.data["shape"] == [25_000, 10] and final.data["seed"] == 7


def test_generate_dataset_with_no_rows_sends_only_totals(client: Client) -> None:
    chunks = list(client.execute_stream("generate_dataset", rows=0))
    assert len(chunks) == 1
    _check_totals(chunks[0], 0, 0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"rows": -1}, "rows must be >= 0"),
        ({"rows": 10, "chunk_size": 0}, "chunk_size must be > 0"),
        ({"rows": 10, "columns": 0}, "columns must be > 0"),
        ({"rows": 10, "dtype": "float16"}, "dtype must be one of float32, float64, int32, int64"),
        ({"rows": 10, "dtype": "int32", "distribution": "normal"}, "distribution must be 'uniform'"),
        ({"rows": 10, "distribution": "poisson"}, "distribution must be one of normal, uniform"),
        ({}, "missing required argument 'rows'"),
    ],
)
def test_generate_dataset_names_bad_arguments(client: Client, args: dict, message: str) -> None:
    with pytest.raises(KraitError, match=message):
        list(client.stream("generate_dataset", args))


def test_stream_file_sends_an_npy_file_back_unchanged(client: Client, tmp_path: Path) -> None:
    array = np.arange(1001 * 6, dtype=np.int16).reshape(1001, 3, 2)
    np.save(tmp_path / "cube.npy", array)
    chunks = list(client.execute_stream("stream_file", path=str(tmp_path / "cube.npy"), chunk_rows=100))
    batches, final = chunks[:-1], chunks[-1]
    assert [c.data.shape for c in batches] == [(100, 3, 2)] * 10 + [(1, 3, 2)]
    assert [c.metadata["offset"] for c in batches] == [str(o) for o in range(0, 1001, 100)]
    np.testing.assert_array_equal(np.concatenate([c.data for c in batches]), array)
    _check_totals(final, 1001, array.nbytes, 11)
    assert final.data["dtype"] == "int16" and final.data["shape"] == [1001, 3, 2] and final.data["format"] == "npy"


def test_stream_file_parses_a_csv_file_in_chunks(client: Client, tmp_path: Path) -> None:
    values = np.round(np.random.default_rng(0).normal(size=(2500, 3)), 6)
    path = tmp_path / "table.csv"
    np.savetxt(path, values, delimiter=",", header="time,volts,amps", comments="", fmt="%.6f")
    chunks = list(client.execute_stream("stream_file", path=str(path), chunk_rows=1000))
    batches, final = chunks[:-1], chunks[-1]
    assert [c.data.shape for c in batches] == [(1000, 3), (1000, 3), (500, 3)]
    assert json.loads(batches[0].metadata["columns"]) == ["time", "volts", "amps"]
    assert "columns" not in batches[1].metadata
    np.testing.assert_array_equal(np.concatenate([c.data for c in batches]), values)
    _check_totals(final, 2500, values.nbytes, 3)
    assert final.data["columns"] == ["time", "volts", "amps"] and final.data["shape"] == [2500, 3]


def test_stream_file_names_the_file_and_line_of_a_bad_csv_row(client: Client, tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b\n" + "1,2\n" * 30 + "3,oops\n", name="broken.csv")
    with pytest.raises(KraitError, match=r"CsvFormatError: .*broken\.csv:32, column 2: not a number") as info:
        list(client.execute_stream("stream_file", path=str(path), chunk_rows=8))
    assert "oops" not in info.value.message  # the tool hands out numbers, never the file's text


def test_stream_file_names_missing_and_unsupported_files(client: Client, tmp_path: Path) -> None:
    with pytest.raises(KraitError, match=r"FileNotFoundError: .*nothing\.npy: no such file"):
        list(client.execute_stream("stream_file", path=str(tmp_path / "nothing.npy")))
    (tmp_path / "notes.txt").write_text("1,2\n")
    with pytest.raises(KraitError, match=r"notes\.txt: unsupported file type '.txt'; stream_file reads .npy and .csv"):
        list(client.execute_stream("stream_file", path=str(tmp_path / "notes.txt")))
    with pytest.raises(KraitError, match="not a regular file"):
        list(client.execute_stream("stream_file", path=str(tmp_path)))
    with pytest.raises(KraitError, match="chunk_rows must be > 0"):
        list(client.execute_stream("stream_file", path=str(tmp_path / "notes.txt"), chunk_rows=0))


def _refusal(c: Client, path: str) -> KraitError:
    with pytest.raises(KraitError) as info:
        list(c.execute_stream("stream_file", path=path))
    return info.value


def test_data_root_confines_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    np.save(root / "inside.npy", np.arange(4))
    np.save(tmp_path / "outside.npy", np.arange(4))
    (root / "link.npy").symlink_to(tmp_path / "outside.npy")  # a link inside the root, pointing out of it
    (root / "sub" / "up.npy").symlink_to("../inside.npy")  # a link that stays inside: fine
    (root / "dangling.npy").symlink_to(tmp_path / "missing.npy")  # out of the root, to nothing
    env = {"KRAIT_DATA_ROOT": str(root)}
    with running_worker("adapters.dataset:DatasetAdapter", env=env) as w, Client(w.target, timeout=30) as c:
        chunks = list(c.execute_stream("stream_file", path="inside.npy"))  # relative to the root
        np.testing.assert_array_equal(chunks[0].data, np.arange(4))
        assert list(c.execute_stream("stream_file", path=str(root / "inside.npy")))[-1].data["rows"] == 4
        assert list(c.execute_stream("stream_file", path="sub/up.npy"))[-1].data["rows"] == 4
        assert list(c.execute_stream("stream_file", path="sub/../inside.npy"))[-1].data["rows"] == 4
        answers = {}
        for path in [
            "../outside.npy",  # exists, outside
            "../missing.npy",  # does not exist, outside
            str(tmp_path / "outside.npy"),
            str(tmp_path / "missing.npy"),
            "/etc/shadow",
            "/etc/no-such-file.csv",
            "link.npy",
            "dangling.npy",
            "sub/../../outside.npy",
        ]:
            error = _refusal(c, path)
            assert (error.code, error.type) == (grpc.StatusCode.INVALID_ARGUMENT, "PathNotAllowedError"), error
            assert (
                not error.traceback
                and str(root) not in error.message
                and str(tmp_path) + "/" not in (error.message.replace(path, ""))
            )
            answers[path] = error.message.replace(repr(path), "<path>")
        # one answer whatever lies outside: it says nothing about whether the file exists
        assert len(set(answers.values())) == 1, answers
        assert answers["/etc/shadow"] == (
            "PathNotAllowedError: argument 'path': <path> is outside the data root (KRAIT_DATA_ROOT): name a file"
            " under it, relative to the root"
        )
        missing = _refusal(c, "nothing.npy")  # inside the root: saying it is missing reveals nothing outside
        assert (missing.code, missing.type) == (grpc.StatusCode.INVALID_ARGUMENT, "FileNotFoundError")
        assert "nothing.npy: no such file under the data root" in missing.message and str(root) not in missing.message


def test_undecodable_files_never_echo_their_bytes(client: Client, tmp_path: Path) -> None:
    (tmp_path / "secret.npy").write_bytes(b"s3cr3t:$6$hash:19000:0:99999:7:::\n")
    (tmp_path / "header.npy").write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': 'SECRETS', 'fortran_order'}\n")
    (tmp_path / "words.csv").write_text("1,2\nhunter2,3\n")
    for name in ["secret.npy", "header.npy", "words.csv"]:
        with pytest.raises(KraitError) as info:
            list(client.execute_stream("stream_file", path=str(tmp_path / name)))
        message = info.value.message + info.value.traceback
        assert name in info.value.message
        assert not any(word in message for word in ("s3cr3t", "SECRETS", "hunter2")), message


def _held(pid: int, path: Path) -> dict[str, int]:
    """How the worker holds ``path``: open descriptors and memory mappings."""
    fds = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            fds += os.readlink(f"/proc/{pid}/fd/{name}") == str(path)
    with open(f"/proc/{pid}/maps") as maps:
        mapped = sum(line.rstrip("\n").endswith(" " + str(path)) for line in maps)
    return {"fds": fds, "maps": mapped}


def _wait_released(pid: int, path: Path, since: float) -> None:
    def released() -> bool:
        held = _held(pid, path)
        assert held == {"fds": 0, "maps": 0}, f"{path.name} still held: {held}"
        return True

    eventually(released, timeout=max(0.0, since + PROMPT - time.monotonic()))


@pytest.fixture(scope="module")
def big_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # 200k one-row chunks: far more than the worker buffers ahead, so a stream read once is still mid-file
    folder = tmp_path_factory.mktemp("big").resolve()
    np.save(folder / "big.npy", np.arange(200_000 * 8, dtype=np.float64).reshape(-1, 8))
    (folder / "big.csv").write_text("a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(200_000)))
    return {"npy": folder / "big.npy", "csv": folder / "big.csv"}


@pytest.mark.parametrize("kind", ["npy", "csv"])
def test_cancel_mid_stream_releases_the_file(
    dataset_worker: Worker, client: Client, big_files: dict[str, Path], kind: str
) -> None:
    pid, path = dataset_worker.info["pid"], big_files[kind]
    stream = client.stream("stream_file", {"path": str(path), "chunk_rows": 1})
    first = next(stream)
    assert first.metadata["offset"] == "0"
    held = _held(pid, path)
    assert held["fds"] >= 1  # mid-stream: the worker has the file open ...
    if kind == "npy":
        assert held["maps"] >= 1  # ... and mapped
    cancelled = time.monotonic()
    stream.close()
    _wait_released(pid, path, cancelled)


def test_a_finished_stream_releases_the_file(
    dataset_worker: Worker, client: Client, big_files: dict[str, Path]
) -> None:
    final = list(client.execute_stream("stream_file", path=str(big_files["npy"]), chunk_rows=50_000))[-1]
    assert final.data["rows"] == 200_000
    assert _held(dataset_worker.info["pid"], big_files["npy"]) == {"fds": 0, "maps": 0}
