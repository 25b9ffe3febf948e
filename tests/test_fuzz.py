"""Property-based tests of the per-frame path (hypothesis): whatever a robot sends, the decoder raises
nothing but ProtocolError, and a connection answers every frame with exactly one message (actions or
an error text that says what was wrong), never a dropped socket, never an internal error, never NaN.

No Triton here: the policies are the shipped and test repositories' configs, parsed as Triton serves
them, behind a backend that answers instantly. Bounded: a fixed number of examples per property.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from openpi_client import msgpack_numpy

from benchmarks.instant_backend import InstantBackend as InstantAnswers
from openpi_triton.config import Settings
from openpi_triton.example_observations import aloha, droid, libero
from openpi_triton.front.codec import ProtocolError, decode_frame
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.session import RobotConnection
from openpi_triton.triton.repository import policy_from_repository

from .conftest import MODEL_REPOSITORY, TEST_MODEL_REPOSITORY

# Hypothesis warns when the global `random` state moves while it draws. In the full suite it does, from
# other threads: the session's uvicorn front and lingering websocket clients send keep-alive pings whose
# payload is random.getrandbits(32). Nothing here draws from `random`.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

POLICIES = {name: policy_from_repository(MODEL_REPOSITORY, name) for name in ("libero", "droid", "aloha")}
POLICIES["session_counter"] = policy_from_repository(TEST_MODEL_REPOSITORY, "session_counter")


def _small(observation: dict[str, Any]) -> dict[str, Any]:
    """The example observation with 8x8 cameras: the policies take any camera size, and fuzzing is faster."""
    small = {}
    for key, value in observation.items():
        if isinstance(value, dict):
            small[key] = _small(value)
        elif isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3:
            small[key] = value[:8, :8, :] if value.shape[-1] == 3 else value[:, :8, :8]
        else:
            small[key] = value
    return small


RNG = np.random.default_rng(0)
VALID = {"libero": _small(libero(RNG)), "droid": _small(droid(RNG)), "aloha": _small(aloha(RNG)),
         "session_counter": {"inputs": {"x": np.zeros(1, np.float32)}}}


class FakeWebSocket:
    def __init__(self) -> None:
        self.sent: list[bytes | str] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        self.sent.append(data)


class InstantBackend(InstantAnswers):
    """The fuzzed policies, answered at once with `fill` (zeros, or NaN/inf to test the guard)."""

    def __init__(self, fill: float = 0.0) -> None:
        super().__init__([(MODEL_REPOSITORY, name) for name in ("libero", "droid", "aloha")]
                         + [(TEST_MODEL_REPOSITORY, "session_counter")], fill)


LOOP = asyncio.new_event_loop()


def handle(policy_name: str, frame: bytes, backend: Any = None) -> tuple[list[bytes | str], FrontMetrics]:
    """One frame through a connection's per-frame path: what the robot received, and the metrics."""
    websocket, metrics = FakeWebSocket(), FrontMetrics()
    connection = RobotConnection(websocket, POLICIES[policy_name], backend or InstantBackend(),
                                 Settings(), metrics)
    LOOP.run_until_complete(connection._handle(frame, 0.0))
    return websocket.sent, metrics


def outcomes(metrics: FrontMetrics) -> set[str]:
    return {sample.labels["outcome"] for family in metrics.requests.collect() for sample in family.samples
            if sample.name.endswith("_total") and sample.value > 0}


# --- strategies -----------------------------------------------------------------------------------

DTYPES = ["<f4", "<f8", ">f8", "<f2", "|u1", "<u2", "<i4", "<i8", "|b1", "<U3", ">U2", "|S4",
          "|O", "<c8", "|V4", "<M8", "<m8", "<f3", "(2,)<f4", "|S0", "", "f", "weird"]
# Text with lone surrogates half the time (st.text never makes them); msgpack packs them with
# surrogatepass, NumPy keeps them as UTF-32 code points.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
text = st.text(max_size=12) | st.lists(st.characters() | surrogates, min_size=1, max_size=6).map("".join)
ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), text, st.binary(max_size=16))
dtype_values = st.one_of(st.sampled_from(DTYPES), text, st.binary(max_size=6), ints, st.none())
shape_values = st.one_of(st.lists(st.integers(-2, 40), max_size=4), ints, st.none(), text,
                         st.lists(scalars, max_size=3))


@st.composite
def consistent_arrays(draw: st.DrawFn) -> dict[str, Any]:
    """Markers whose data length matches dtype and shape, so they get past the size check."""
    dtype = np.dtype(draw(st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", "<U3", ">U2", "|S4", "<u2"])))
    shape = draw(st.lists(st.integers(0, 5), max_size=3))
    data = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    return {"__ndarray__": True, "data": data, "dtype": dtype.str, "shape": shape}


markers = st.one_of(
    st.fixed_dictionaries({"__ndarray__": st.just(True), "data": st.binary(max_size=64) | scalars,
                           "dtype": dtype_values, "shape": shape_values}),
    st.fixed_dictionaries({"__npgeneric__": st.just(True), "data": scalars, "dtype": dtype_values}),
    st.fixed_dictionaries({"nd": st.booleans(), "type": dtype_values, "kind": text | st.binary(max_size=3),
                           "shape": shape_values, "data": st.binary(max_size=64) | scalars}),
    consistent_arrays(),
)
# Any NumPy array or scalar, sent as a hostile robot would: raw bytes under openpi-client's marker, whatever
# the dtype (object, complex, datetime, unicode holding lone surrogates ...).
numpy_values = st.one_of(
    hnp.arrays(hnp.scalar_dtypes() | hnp.unicode_string_dtypes() | hnp.byte_string_dtypes(),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    st.builds(np.float32, st.floats(width=32)),
)
# Strings as NumPy sends them: what a prompt may be.
text_arrays = st.one_of(st.builds(np.array, text), st.builds(np.str_, text), st.builds(lambda t: np.array([t]), text))
field_values = st.one_of(text_arrays, numpy_values, text, scalars, st.deferred(lambda: values))
values = st.recursive(
    scalars | markers | numpy_values | text_arrays,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text | st.binary(max_size=4), children,
                                                                      max_size=4),
    max_leaves=10,
)
control_values = st.one_of(values, st.sampled_from(["infer", "reset"]), st.integers(0, 2**63 - 1),
                           st.builds(lambda v: {"__ndarray__": True, "data": np.array(v).tobytes(), "dtype": "<U5",
                                                "shape": [len(v)]}, st.lists(st.sampled_from(["infer", "reset"]),
                                                                             min_size=1, max_size=3)))


def _raw_marker(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": True, "data": obj.tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return _raw_marker(np.asarray(obj))
    return obj


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_raw_marker, unicode_errors="surrogatepass")


VALID_CONTROL = {"endpoint": st.sampled_from(["infer", "reset"]), "session_id": text | st.integers(0, 2**63),
                 "seed": st.integers(0, 2**63 - 1)}


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, bytes]:
    """A policy and a frame for it: its valid observation with one or two keys replaced or dropped (so
    that most frames get deep into the checks), and control keys that are absent, valid or anything."""
    name = draw(st.sampled_from(sorted(POLICIES)))
    observation: dict[Any, Any] = dict(VALID[name])
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*sorted(observation), "extra"]))
        if draw(st.integers(0, 4)) == 0:
            observation.pop(key, None)
        else:
            observation[key] = draw(field_values)
    for control, valid in VALID_CONTROL.items():
        choice = draw(st.sampled_from(["absent", "valid", "any"]))
        if choice != "absent":
            observation[control] = draw(valid if choice == "valid" else control_values)
    return name, pack(observation)


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_get_a_protocol_error(frame):
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_frame(frame), dict)


@FUZZ
@given(values)
def test_any_msgpack_value_decodes_or_gets_a_protocol_error(value):
    try:
        decoded = decode_frame(pack(value))
    except ProtocolError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(decoded, dict)


def _one_answer(name: str, frame: bytes) -> None:
    sent, metrics = handle(name, frame)
    assert len(sent) == 1, sent
    assert outcomes(metrics) <= {"ok", "bad_request"}, (outcomes(metrics), sent)
    if isinstance(sent[0], str):
        assert "Traceback" not in sent[0] and sent[0].strip()
    else:
        answer = msgpack_numpy.unpackb(sent[0])
        assert "actions" in answer or "step" in answer or answer == {"status": "reset successful"}


@FUZZ
@given(st.sampled_from(sorted(POLICIES)), st.data())
def test_any_value_of_one_observation_key_gets_one_answer(name, data):
    observation = dict(VALID[name])
    key = data.draw(st.sampled_from(sorted({*observation, *(spec.key for spec in POLICIES[name].inputs)})))
    observation[key] = data.draw(field_values)
    _one_answer(name, pack(observation))


@FUZZ
@given(st.sampled_from(sorted(POLICIES)), st.dictionaries(st.sampled_from(sorted(VALID_CONTROL)), control_values))
def test_any_control_values_get_one_answer(name, controls):
    _one_answer(name, pack({**VALID[name], **controls}))


@FUZZ
@given(frames())
def test_every_frame_gets_exactly_one_answer_and_never_an_internal_error(case):
    _one_answer(*case)


# --- the cases found by the fault-injection run, and the guard against NaN ------------------------------


def _unicode_array(code_points: list[int]) -> dict[str, Any]:
    return {"__ndarray__": True, "data": np.array(code_points, "<u4").tobytes(), "dtype": f"<U{len(code_points)}",
            "shape": []}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"prompt": _unicode_array([0x61, 0xD800])}, "key 'prompt': the string array holds code points that are not valid"),
    ({"prompt": _unicode_array([0x110000])}, "not valid unicode"),
    ({"endpoint": np.array(["infer", "reset"])}, "endpoint must be the string 'infer' or 'reset', got ndarray"),
    ({"endpoint": 3}, "endpoint must be the string 'infer' or 'reset', got 3"),
    ({"session_id": np.array(["a", "b"])}, "session_id must be a string or an integer, got ndarray"),
    ({"session_id": True}, "session_id must be a string or an integer, got bool"),
    ({"session_id": "x" * 1000}, "session_id must be at most 256 characters"),
    ({"seed": 1.5}, "seed must be an integer in [0, 2^63), got float"),
    ({"seed": np.array([1, 2])}, "seed must be an integer in [0, 2^63), got ndarray"),
])
def test_hostile_control_keys_and_text_get_an_error_text(changes, expected):
    sent, metrics = handle("libero", pack({**VALID["libero"], **changes}))
    assert len(sent) == 1 and isinstance(sent[0], str), sent
    assert expected in sent[0]
    assert outcomes(metrics) == {"bad_request"}


def test_a_lone_surrogate_in_a_msgpack_string_is_an_error_text():
    sent, _ = handle("libero", pack({**VALID["libero"], "prompt": "pick \udc80 up"}))
    assert len(sent) == 1 and isinstance(sent[0], str) and "not valid msgpack" in sent[0]


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_never_reach_the_robot(fill):
    sent, metrics = handle("libero", pack(VALID["libero"]), InstantBackend(fill))
    assert len(sent) == 1 and isinstance(sent[0], str), "non-finite actions were sent as an answer"
    assert "policy 'libero' returned NaN or inf in output 'actions'" in sent[0]
    assert outcomes(metrics) == {"nonfinite_output"}


def test_non_finite_padding_outside_the_robots_slice_is_not_an_error():
    """The core's padded action dims/steps never reach a LIBERO robot, so they cannot fail its step."""
    class PaddingNaNBackend(InstantBackend):
        async def infer(self, policy, tensors, request_id, sequence=None):
            outputs = await super().infer(policy, tensors, request_id, sequence)
            actions = outputs["actions"]
            rows, dims = policy.slices["actions"]
            actions[..., rows:, :] = np.nan
            actions[..., dims:] = np.inf
            return outputs

    sent, metrics = handle("libero", pack(VALID["libero"]), PaddingNaNBackend())
    assert len(sent) == 1 and isinstance(sent[0], bytes), sent
    assert np.isfinite(msgpack_numpy.unpackb(sent[0])["actions"]).all()
    assert outcomes(metrics) == {"ok"}


def test_an_unexpected_exception_is_an_error_text_not_a_dropped_socket():
    class BrokenBackend:
        async def infer(self, *args, **kwargs):
            raise KeyError("something nobody expected")

    sent, metrics = handle("libero", pack(VALID["libero"]), BrokenBackend())
    assert sent == ["internal server error on this frame (KeyError); the connection stays open"]
    assert outcomes(metrics) == {"internal_error"}
