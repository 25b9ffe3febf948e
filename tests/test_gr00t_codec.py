"""GR00T's wire format and the GR00T-shaped policy, without a server: array decoding, the two ModalityConfig
forms, get_action in both generations, and the repository's modality config checked against its policy."""

from __future__ import annotations

import gc
import io
import json
import sys
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import pytest

from openpi_triton.check import check_repository
from openpi_triton.example_observations import so100
from openpi_triton.front.codec import ProtocolError
from openpi_triton.front.gr00t.codec import decode_request, decode_value, encode_reply, modality_config_reply
from openpi_triton.front.gr00t.requests import action_reply, parse_get_action
from openpi_triton.front.observations import observation_to_tensors, rows_response
from openpi_triton.loadgen.gr00t import action_data, pack_request, unpack_reply
from openpi_triton.triton.policy import PolicyConfigError, policy_from_config
from openpi_triton.triton.repository import policy_from_repository, read_model_config

from .conftest import MODEL_REPOSITORY
from .test_cli import edit, repository  # noqa: F401  (fixture)
from .waiting import run_threads

SO100 = policy_from_repository(MODEL_REPOSITORY, "so100")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decoded(value: Any) -> Any:
    return decode_value(msgpack.unpackb(msgpack.packb(value), raw=False))


def sent_data(data: Any) -> Any:
    """`data` as the server decodes it after a client sent it."""
    return decode_value(decode_request(pack_request("get_action", data))["data"])


# --- arrays -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.zeros((1, 4, 5, 3), np.uint8),
    np.array(["pick", "place"]),
])
def test_npy_arrays_decode_as_written(array):
    value = decoded({"__ndarray_class__": True, "as_npy": npy(array)})
    assert value.shape == array.shape and value.dtype == array.dtype
    np.testing.assert_array_equal(value, array)


def test_msgpack_numpy_arrays_of_newer_clients_decode():
    array = np.arange(10, dtype=np.float32).reshape(2, 5)
    body = msgpack_numpy.packb({"endpoint": "get_action", "data": {"state.x": array}})  # bin keys: nd, type, ...
    np.testing.assert_array_equal(decode_value(decode_request(body)["data"])["state.x"], array)


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize(("as_npy", "message"), [
    (_npy_header("|O", (2,)) + b"\x80\x04N." * 2, "object dtype"),           # a pickled object array
    (_npy_header("<f4", (10**6, 10**6)) + b"\0" * 16, "needs 4000000000000"),  # a size the data does not have
    (_npy_header("<c8", (1,)) + b"\0" * 8, "complex dtype"),
    (b"\x93NUMPY\x01\x00\xff\xff{'descr': ", "not a readable .npy file"),
    (b"not an npy file", "not a readable .npy file"),
    ("text", "must be the bytes of a .npy file"),
])
def test_bad_npy_payloads_are_refused_by_name(as_npy, message):
    with pytest.raises(ProtocolError, match=message) as error:
        decoded({"observation": {"video": {"front": {"__ndarray_class__": True, "as_npy": as_npy}}}})
    assert "data.observation.video.front" in str(error.value)


@pytest.mark.parametrize(("body", "message"), [
    (b"PK\x03\x04" + b"\0" * 30, "torch.save \\(pickle\\) payload"),
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2]), "expected a msgpack map"),
    (msgpack.packb({1: "integer key"}), "not valid msgpack"),
])
def test_requests_that_are_no_msgpack_map_are_refused(body, message):
    with pytest.raises(ProtocolError, match=message):
        decode_request(body)


def test_replies_carry_npy_arrays_and_no_numpy_scalars():
    reply = unpack_reply(encode_reply({"a": np.ones((2, 3), np.float32), "n": np.float32(1.5), "i": np.int64(3)}))
    assert reply["a"].dtype == np.float32 and reply["a"].shape == (2, 3)
    assert reply["n"] == 1.5 and type(reply["n"]) is float and type(reply["i"]) is int


# --- ModalityConfig ---------------------------------------------------------------------------------------


def test_modality_config_n16_form_is_a_map_with_bare_keys_and_every_field():
    reply = modality_config_reply(SO100.modality, "n1.6")
    assert set(reply) == {"video", "state", "action", "language"}
    action = reply["action"]
    assert action["__ModalityConfig_class__"] is True and action["as_json"] == action["as_dict"]
    assert action["as_json"]["modality_keys"] == ["single_arm", "gripper"]
    assert action["as_json"]["delta_indices"] == list(range(16))
    assert action["as_json"]["action_configs"][1]["rep"] == "ABSOLUTE"
    assert reply["video"]["as_json"]["sin_cos_embedding_keys"] is None
    assert reply["language"]["as_json"]["modality_keys"] == ["annotation.human.task_description"]


def test_modality_config_n15_form_is_a_json_string_with_prefixed_keys():
    reply = modality_config_reply(SO100.modality, "n1.5")
    as_json = {name: json.loads(entry["as_json"]) for name, entry in reply.items()}
    assert as_json["video"] == {"delta_indices": [0], "modality_keys": ["video.front", "video.wrist"]}
    assert as_json["action"]["modality_keys"] == ["action.single_arm", "action.gripper"]
    assert as_json["language"]["modality_keys"] == ["annotation.human.task_description"]


# --- get_action in both generations -------------------------------------------------------------------------


def parsed(generation: str, environments: int | None):
    data = action_data(so100(np.random.default_rng(0)), generation, environments)
    return parse_get_action(sent_data(data), SO100.modality)


def test_n15_unbatched_and_batched_are_told_apart_by_the_state_rank():
    one = parsed("n1.5", None)
    assert one.rows is None and not one.n16 and one.observation["state.single_arm"].shape == (1, 5)
    assert one.observation["annotation.human.task_description"] == "pick up the red cube and put it in the bin"
    three = parsed("n1.5", 3)
    assert three.rows == 3 and three.observation["state.single_arm"].shape == (3, 1, 5)
    assert len(three.observation["annotation.human.task_description"]) == 3


def test_n16_nested_observation_becomes_the_policys_flat_keys():
    request = parsed("n1.6", 2)
    assert request.rows == 2 and request.n16 and request.nested
    assert set(request.observation) == set(SO100.required_keys)
    task = "pick up the red cube and put it in the bin"
    assert request.observation["annotation.human.task_description"] == [task] * 2
    tensors = observation_to_tensors(SO100, request.observation, None, request.rows)
    assert tensors["front"].shape == (2, 1, 224, 224, 3) and tensors["task"].shape == (2, 1)
    assert tensors["seed"].shape == (2, 1) and tensors["seed"][0, 0] != tensors["seed"][1, 0]


def test_replies_have_each_generations_keys_and_shapes():
    core = np.random.default_rng(0).normal(size=(2, 50, 32)).astype(np.float32)
    actions = rows_response(SO100, {"actions": core})
    np.testing.assert_array_equal(actions["action.single_arm"], core[:, :16, :5])
    np.testing.assert_array_equal(actions["action.gripper"], core[:, :16, 5:6])  # the offset cut
    n16 = action_reply(parsed("n1.6", 2), actions, SO100.modality)
    assert isinstance(n16, list) and n16[1] == {} and n16[0]["gripper"].shape == (2, 16, 1)
    n15 = action_reply(parsed("n1.5", 2), actions, SO100.modality)
    assert set(n15) == {"action.single_arm", "action.gripper"} and n15["action.single_arm"].shape == (2, 16, 5)
    one = action_reply(parsed("n1.5", None), rows_response(SO100, {"actions": core[:1]}), SO100.modality)
    assert one["action.gripper"].shape == (16,) and one["action.single_arm"].shape == (16, 5)  # GR00T's squeeze


@pytest.mark.parametrize(("data", "message"), [
    ({"observation": {}, "seed": 1}, r"unexpected arguments \['seed'\]"),
    ({"observation": [1]}, "observation must be a map"),
    ({"observation": {"video": {}, "robot": {}}}, r"observation keys \['robot'\] are unknown"),
    ([1, 2], "data must be a map"),
    ({"observation": {"video": {"front": np.zeros((0, 1, 4, 4, 3), np.uint8)}}}, "one or more environments"),
])
def test_malformed_get_action_data_is_named(data, message):
    with pytest.raises(ProtocolError, match=message):
        parse_get_action(sent_data(data), SO100.modality)


# --- the modality config in the repository ------------------------------------------------------------------


def so100_config(old: str = "", new: str = "") -> dict[str, Any]:
    config = read_model_config(MODEL_REPOSITORY / "so100" / "config.pbtxt")
    for key, entry in config["parameters"].items():
        entry["string_value"] = entry["string_value"].replace(old, new)
        config["parameters"][key] = entry
    return config


@pytest.mark.parametrize(("old", "new", "message"), [
    ('"delta_indices": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]', '"delta_indices": [0, 1]',
     "needs a slice whose horizon is 2"),
    ('"modality_keys": ["front", "wrist"]', '"modality_keys": ["front", "side"]',
     "no numeric observation 'video.side'"),
    ('"delta_indices": [0], "modality_keys": ["single_arm"', '"delta_indices": [0, 1], "modality_keys": ["single_arm"',
     "T = 2"),
    ('"modality_keys": ["single_arm", "gripper"], "sin', '"modality_keys": ["single_arm"], "sin',
     r"needs observations \['state.gripper'\] that no modality key provides"),
    ('"language": {', '"speech": {', "exactly"),
])
def test_a_modality_config_that_does_not_fit_the_policy_is_refused(old, new, message):
    with pytest.raises(PolicyConfigError, match=message):
        policy_from_config(so100_config(old, new))


def test_an_offset_past_the_output_is_refused():
    with pytest.raises(PolicyConfigError, match=r"at offset \[0, 40\] does not fit"):
        policy_from_config(so100_config('"offset": [0, 5]', '"offset": [0, 40]'))


def test_check_finds_action_dims_the_cuts_leave_out(repository):  # noqa: F811
    edit(repository / "so100" / "config.pbtxt", '"offset": [0, 5]', '"offset": [0, 6]')
    problems = check_repository(repository).problems
    assert any("'action.gripper' slice [16, 1] at offset [0, 6] give action dims [0, 1, 2, 3, 4, 6]" in p
               and "has 6 for 'actions'" in p for p in problems), problems


class _Finalized:
    """Garbage whose collection runs Python code: that is where CPython switches threads in the middle of
    building an AST, the opening python/cpython#106905 needs."""

    def __del__(self) -> None:
        sum(range(50))


def test_the_front_and_gr00t_robots_in_threads_read_npy_arrays_side_by_side():
    """16 GR00T robots in threads beside the front (the mixed-fleet test) once failed a request with
    "SystemError: AST constructor recursion depth mismatch": numpy reads a .npy header with ast, whose
    CPython 3.11 state is shared by all threads. Thread switches every microsecond and a collection every
    50 allocations make the overlap certain instead of rare."""
    previous_interval, previous_threshold = sys.getswitchinterval(), gc.get_threshold()
    request = pack_request("get_action", {"state.arm": np.zeros((1, 5), np.float32)})
    reply = encode_reply({"action.arm": np.ones((16, 5), np.float32)})

    def front() -> None:
        for _ in range(1500):
            garbage = _Finalized()
            garbage.cycle = garbage
            del garbage
            assert decode_value(decode_request(request)["data"])["state.arm"].shape == (1, 5)

    def robot() -> None:
        for _ in range(1500):
            garbage = _Finalized()
            garbage.cycle = garbage
            del garbage
            assert unpack_reply(reply)["action.arm"].shape == (16, 5)

    sys.setswitchinterval(1e-6)
    gc.set_threshold(50, 1, 1)
    try:
        run_threads([front, robot] * 4)
    finally:
        sys.setswitchinterval(previous_interval)
        gc.set_threshold(*previous_threshold)
