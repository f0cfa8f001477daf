"""Payload encoding by content type: .npy arrays, exact JSON, bytes and text."""

from __future__ import annotations

import numpy as np
import pytest

from python_worker.codec import decode_json, decode_npy, decode_value, encode_json, encode_npy, encode_value


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
    assert encode_json(float("nan")) == b"null"  # JSON has no NaN: documented


def test_values_pick_their_content_type() -> None:
    assert encode_value({"a": 1})[1] == "application/json"
    assert encode_value("text")[1] == "application/json"
    assert encode_value(b"\x00")[1] == "application/octet-stream"
    assert encode_value(np.zeros(2))[1] == "application/x-npy"
    assert encode_value("héllo", "text/plain; charset=utf-8") == ("héllo".encode(), "text/plain; charset=utf-8")
    assert decode_value(b"", "") is None
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_value(object())
