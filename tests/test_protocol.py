"""Protocol edge cases through Starlette's TestClient: the app in this process, the real Triton behind it.

Every bad frame gets one text frame that says what was wrong and where (no traceback), and the same
connection then serves a valid observation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import msgpack
import msgpack_numpy as msgpack_numpy_package  # the `msgpack-numpy` package some clients use
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from starlette.testclient import TestClient, WebSocketTestSession

from openpi_triton.example_observations import libero
from openpi_triton.front.app import create_app

from .conftest import front_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(triton) -> Iterator[TestClient]:
    with TestClient(create_app(front_settings(triton))) as test_client:
        yield test_client


@contextlib.contextmanager
def connect(client: TestClient, path: str = "/") -> Iterator[WebSocketTestSession]:
    with client.websocket_connect(path) as ws:
        assert msgpack_numpy.unpackb(ws.receive_bytes()) == {}  # libero's handshake metadata
        yield ws


def reply(ws: WebSocketTestSession, frame: bytes | str) -> dict | str:
    ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame)
    message = ws.receive()
    return message["text"] if message.get("text") is not None else msgpack_numpy.unpackb(message["bytes"])


def observation(**changes: object) -> dict:
    obs = libero(np.random.default_rng(0))
    obs.update(changes)
    return {key: value for key, value in obs.items() if value is not None}


def marker(dtype: str, shape: list[int], data: bytes) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


BAD_FRAMES: dict[str, tuple[bytes | str, str]] = {
    "text frame": ("hello", "expected a binary msgpack frame but got a text frame"),
    "not msgpack": (b"\xc1 definitely not msgpack", "not valid msgpack"),
    "not a map": (msgpack.packb([1, 2]), "expected a msgpack map"),
    "short data": (msgpack.packb({"observation/state": marker("<f8", [8], b"\0" * 7)}),
                   "key 'observation/state': array data is 7 bytes but shape [8] of <f8 needs 64"),
    # 10^12 elements claimed with 8 bytes: refused by arithmetic before anything is allocated.
    "huge claimed shape": (msgpack.packb({"x": marker("<f8", [10**6, 10**6], b"\0" * 8)}), "needs 8000000000000"),
    "object dtype": (msgpack.packb({"x": marker("|O", [1], b"\0" * 8)}), "object dtype '|O' is not accepted"),
    "void dtype": (msgpack.packb({"x": marker("|V8", [1], b"\0" * 8)}), "void dtype '|V8' is not accepted"),
    "complex dtype": (msgpack.packb({"x": marker("<c8", [1], b"\0" * 8)}), "complex dtype '<c8' is not accepted"),
    "no such dtype": (msgpack.packb({"x": marker("<f3", [1], b"\0" * 3)}), "unsupported dtype '<f3'"),
    "zero-width dtype": (msgpack.packb({"x": marker("|S0", [4], b"")}), "zero-width dtype '|S0'"),
    "missing key": (msgpack_numpy.packb(observation(**{"observation/wrist_image": None})),
                    "needs observation keys ['observation/wrist_image'] which are missing"),
    "float image": (msgpack_numpy.packb(observation(**{"observation/image": np.zeros((224, 224, 3))})),
                    "key 'observation/image': expected uint8 of shape [any, any, 3], got float64 of shape"),
    "16-bit image": (msgpack_numpy.packb(observation(**{"observation/image": np.zeros((224, 224, 3), np.uint16)})),
                     "key 'observation/image': expected uint8 of shape [any, any, 3], got uint16"),
    "9-dim state": (msgpack_numpy.packb(observation(**{"observation/state": np.zeros(9)})),
                    "key 'observation/state': expected float32 of shape [8], got float64 of shape [9]"),
    "ragged list state": (msgpack_numpy.packb(observation(**{"observation/state": [[1.0], [1.0, 2.0]]})),
                          "key 'observation/state': expected float32 of shape [8], got a list that is not"),
    "nan state": (msgpack_numpy.packb(observation(**{"observation/state": np.full(8, np.nan)})), "NaN or inf"),
    "inf state": (msgpack_numpy.packb(observation(**{"observation/state": np.full(8, np.inf)})), "NaN or inf"),
    "state beyond float32": (msgpack_numpy.packb(observation(**{"observation/state": np.full(8, 1e39)})),
                             "NaN or inf"),
    "unknown endpoint": (msgpack_numpy.packb({"endpoint": "teleport"}), "unknown endpoint 'teleport'"),
    # The three frames that dropped the socket in the fault-injection run:
    "prompt with a lone surrogate": (
        msgpack.packb({**observation(prompt=None),
                       "prompt": marker("<U2", [], np.array([0x61, 0xD800], "<u4").tobytes())},
                      default=msgpack_numpy.pack_array),
        "key 'prompt': the string array holds code points that are not valid unicode"),
    "endpoint as an array of strings": (msgpack_numpy.packb(observation(endpoint=np.array(["infer", "reset"]))),
                                        "endpoint must be the string 'infer' or 'reset', got ndarray"),
    "session_id as an array": (msgpack_numpy.packb(observation(session_id=np.array(["a", "b"]))),
                               "session_id must be a string or an integer, got ndarray"),
    "bad seed": (msgpack_numpy.packb(observation(seed=-1)), "seed must be an integer in [0, 2^63)"),
}


@pytest.mark.parametrize("case", BAD_FRAMES)
def test_bad_input_gets_a_clear_error_and_the_connection_stays_usable(client, case):
    frame, expected = BAD_FRAMES[case]
    with connect(client) as ws:
        answer = reply(ws, frame)
        assert isinstance(answer, str), "errors are text frames (openpi_client raises them as RuntimeError)"
        assert expected in answer
        assert "Traceback" not in answer and "\n" not in answer.strip()
        assert reply(ws, msgpack_numpy.packb(observation()))["actions"].shape == (10, 7)


def test_an_extreme_state_never_gets_non_finite_actions(client):
    """3e38 is a finite float32, but quantile normalisation overflows on it: the robot gets finite
    actions or an error that names the policy and the output, never NaN."""
    with connect(client) as ws:
        answer = reply(ws, msgpack_numpy.packb(observation(**{"observation/state": np.full(8, 3e38)})))
        if isinstance(answer, str):
            assert "policy 'libero' returned NaN or inf in output 'actions'" in answer
        else:
            assert np.isfinite(answer["actions"]).all()
        assert reply(ws, msgpack_numpy.packb(observation()))["actions"].shape == (10, 7)


def test_msgpack_numpy_package_arrays_and_scalars_are_accepted(client):
    """A client of the msgpack-numpy package gets its answers in that package's markers (decided per
    connection from its frames); an openpi-client robot keeps openpi's."""
    with connect(client) as ws:
        obs = {**observation(), "seed": np.int64(7)}
        ws.send_bytes(msgpack.packb(obs, default=msgpack_numpy_package.encode))
        with_package = msgpack.unpackb(ws.receive_bytes(), object_hook=msgpack_numpy_package.decode)
    with connect(client) as ws:
        with_openpi = reply(ws, msgpack_numpy.packb({**observation(), "seed": 7}))
        assert with_package["actions"].shape == (10, 7) and with_package["actions"].dtype == np.float32
        # Same observation, same seed: the two encodings decode to the same request.
        np.testing.assert_array_equal(with_package["actions"], with_openpi["actions"])


def test_nested_maps_are_flattened_with_slashes(client):
    with connect(client) as ws:
        obs = observation()
        robot = {key.split("/", 1)[1]: obs.pop(key) for key in list(obs) if key.startswith("observation/")}
        nested = {"observation": robot, **obs, "seed": 3}
        flat = {**observation(), "seed": 3}
        np.testing.assert_array_equal(reply(ws, msgpack_numpy.packb(nested))["actions"],
                                      reply(ws, msgpack_numpy.packb(flat))["actions"])
