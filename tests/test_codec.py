"""Payload encoding by content type: .npy arrays, exact JSON, bytes and text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from python_worker.codec import (
    JSONValueError,
    NonFiniteError,
    decode_json,
    decode_npy,
    decode_value,
    encode_json,
    encode_npy,
    encode_value,
    npy_header,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        np.array(2.5),
        np.zeros((0, 3), dtype=np.uint8),
        np.array([1 + 2j], dtype=np.complex64),
        np.arange(5, dtype=">i4"),
    ],
)
def test_npy_round_trip(array: np.ndarray) -> None:
    data = encode_npy(array)
    assert data.startswith(b"\x93NUMPY")
    back = decode_npy(data)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


def test_npy_is_readable_by_numpy_load(tmp_path) -> None:
    array = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    path = tmp_path / "a.npy"
    path.write_bytes(encode_npy(array))
    assert np.array_equal(np.load(path), array)


def test_npy_decode_is_a_view_and_checks_sizes() -> None:
    data = encode_npy(np.ones(1000, dtype=np.float64))
    assert not decode_npy(data).flags.owndata
    with pytest.raises(ValueError, match="needs 8000"):
        decode_npy(data[:-8])
    with pytest.raises(ValueError, match=r"not a valid \.npy payload"):
        decode_npy(b"hello")


def test_object_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="pickle"):
        encode_npy(np.array([object()]))


def test_json_integers_stay_exact_and_numpy_scalars_are_numbers() -> None:
    value = {"big": 2**100, "neg": -(2**70), "small": 3, "f": 0.1}
    assert decode_json(encode_json(value)) == value
    assert decode_json(encode_json({"x": np.float32(1.5), "n": np.int64(7)})) == {"x": 1.5, "n": 7}
    with pytest.raises(NonFiniteError, match=r"\['x'\]\[1\] is nan, not a finite number"):
        encode_json({"x": [1.0, float("nan")]})  # JSON has no NaN, and null would pass for "no value"
    assert encode_json({"x": None, "s": "null"}) == b'{"x":null,"s":"null"}'


def test_values_pick_their_content_type() -> None:
    assert encode_value({"a": 1})[1] == "application/json"
    assert encode_value("text")[1] == "application/json"
    assert encode_value(b"\x00")[1] == "application/octet-stream"
    assert encode_value(np.zeros(2))[1] == "application/x-npy"
    assert encode_value("héllo", "text/plain; charset=utf-8") == ("héllo".encode(), "text/plain; charset=utf-8")
    assert decode_value(b"", "") is None
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_value(object())


LONG = "1234567890123456789"  # 19 digits: sends a document to the exact standard-library parser


@pytest.mark.parametrize("extra", ["", f', "n": {LONG}'], ids=["orjson", "stdlib"])
@pytest.mark.parametrize(
    ("doc", "path", "problem"),
    [
        ('{"a": 1e400', ("a",), "not a finite number"),
        ('{"a": -1e400', ("a",), "not a finite number"),
        ('{"a": NaN', ("a",), "not a finite number"),
        ('{"a": {"k": [1, Infinity]}', ("a", "k", 1), "not a finite number"),
        ('{"s": "\\ud800"', ("s",), "lone surrogate"),
    ],
)
def test_refused_json_values_are_refused_the_same_way_by_either_parser(
    doc: str, path: tuple, problem: str, extra: str
) -> None:
    with pytest.raises(JSONValueError) as info:
        decode_json(doc + extra + "}")
    assert info.value.path == path and problem in info.value.problem


@pytest.mark.parametrize("extra", ["", LONG], ids=["orjson", "stdlib"])
def test_deep_nesting_is_a_value_error(extra: str) -> None:
    with pytest.raises(ValueError, match="nesting is too deep"):
        decode_json("[" * 5000 + extra + "]" * 5000)


def test_big_integers_and_surrogate_pairs_still_decode() -> None:
    assert decode_json(f'{{"n": {LONG}1234, "f": 1.5, "e": "\\ud83d\\ude00"}}') == {
        "n": int(LONG + "1234"),
        "f": 1.5,
        "e": "\N{GRINNING FACE}",
    }


def _npy(header: str, data: bytes = b"\0" * 24) -> bytes:
    raw = header.encode("latin1")
    pad = 64 - (10 + len(raw) + 1) % 64
    return b"\x93NUMPY\x01\x00" + (len(raw) + pad + 1).to_bytes(2, "little") + raw + b" " * pad + b"\n" + data


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, }"), "not a valid .npy payload"),
        (_npy("(" * 300), "not a valid .npy payload"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 5000 + "}"), "not a valid .npy payload"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (10**30,), }"), "not a valid .npy payload"),
        (_npy("{'descr': 'O', 'fortran_order': False, 'shape': (3,), }"), "Python objects"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-6,), }"), "negative dimension"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2**32, 2**32), }"), "not a valid .npy payload"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", b""), "needs"),
        (b"\x93NUMPY\x02\x00\xff\xff\xff\xff{", "not a valid .npy payload"),
        (b"\x93NUMPY", "not a valid .npy payload"),
        (b"", "not a valid .npy payload"),
    ],
)
def test_malformed_npy_is_a_value_error_saying_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        decode_npy(payload)


def test_npy_with_a_long_header_decodes() -> None:
    dtype = np.dtype([(f"field_{i}", "<f4") for i in range(300)])  # a header of several kilobytes
    array = np.zeros(2, dtype=dtype)
    assert len(npy_header(array)) > 4096
    assert decode_npy(encode_npy(array)).dtype == dtype
