"""The wire codec: openpi-client's and msgpack-numpy's array markers, and refusal of hostile frames."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy

from openpi_triton.front.codec import ProtocolError, decode_frame, encode


def test_decodes_what_openpi_client_sends_and_flattens_nested_maps():
    state = np.arange(14, dtype=np.float64)
    image = np.zeros((3, 224, 224), np.uint8)
    frame = msgpack_numpy.packb({"state": state, "images": {"cam_high": image}, "seed": np.int64(3)})
    message = decode_frame(frame)
    assert set(message) == {"state", "images/cam_high", "seed"}
    np.testing.assert_array_equal(message["state"], state)
    assert message["images/cam_high"].shape == (3, 224, 224) and message["seed"] == 3


def test_arrays_are_views_on_the_frame_not_copies():
    message = decode_frame(msgpack_numpy.packb({"x": np.ones(1000, np.float32)}))
    assert not message["x"].flags.owndata  # a view on msgpack's bytes


def test_accepts_msgpack_numpy_package_markers():
    state = np.linspace(0, 1, 8)
    frame = msgpack.packb({"observation/state": {b"nd": True, b"type": state.dtype.str, b"kind": b"",
                                                 b"shape": state.shape, b"data": state.tobytes()}})
    np.testing.assert_array_equal(decode_frame(frame)["observation/state"], state)


def test_encoded_responses_decode_in_openpi_client():
    actions = np.random.default_rng(0).normal(size=(10, 7)).astype(np.float32)
    decoded = msgpack_numpy.unpackb(encode({"actions": actions, "server_timing": {"infer_ms": 1.5}}))
    np.testing.assert_array_equal(decoded["actions"], actions)
    assert decoded["actions"].dtype == np.float32 and decoded["server_timing"] == {"infer_ms": 1.5}


def _marker(data: bytes, dtype: str, shape: list[int]) -> bytes:
    return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})


@pytest.mark.parametrize(
    "frame, expected",
    [
        (b"\xc1\xc1 not msgpack", "not valid msgpack"),
        (msgpack.packb([1, 2, 3]), "expected a msgpack map"),
        (_marker(b"\x00" * 10, "<f4", [3]), "10 bytes but shape [3] of <f4 needs 12"),
        (_marker(b"\x00" * 8, "<f4", [10**6, 10**6]), "needs 4000000000000"),
        (_marker(b"\x00" * 8, "|O", [1]), "object dtype"),
        (_marker(b"\x00" * 8, "|V8", [1]), "void dtype"),
        (_marker(b"\x00" * 8, "<c8", [1]), "complex dtype"),
        (_marker(b"\x00" * 8, "<f4", [-2]), "non-negative"),
        (_marker(b"\x00" * 8, "(2,)<f4", [1]), "unsupported dtype"),
    ],
)
def test_hostile_frames_get_a_clear_error(frame, expected):
    with pytest.raises(ProtocolError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        decode_frame(frame)


def test_errors_name_the_key():
    with pytest.raises(ProtocolError, match="key 'images/cam_high'"):
        decode_frame(msgpack.packb({"images": {"cam_high": {b"__ndarray__": True, b"data": b"", b"dtype": "|u1",
                                                            b"shape": [3, 224, 224]}}}))
