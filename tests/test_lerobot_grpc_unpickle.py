"""The LeRobot endpoint's pickle reader: what the stock client sends is read, and nothing else runs."""

from __future__ import annotations

import os
import pickle
import pickletools
import time
from pathlib import Path

import numpy as np
import pytest

from openpi_triton.front.lerobot.unpickle import PayloadError, read_instructions, read_observation
from tests.lerobot_pickles import (
    NEW_MODULE,
    OLD_MODULE,
    RemotePolicyConfig,
    TimedObservation,
    dumps_as,
    features,
)

LIMIT = 16 * 1024 * 1024


def observation(**extra):
    raw = {f"joint{i}.pos": float(i) for i in range(6)}
    raw["front"] = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    raw["task"] = "pick the cube"
    return {**raw, **extra}


@pytest.mark.parametrize("module", [NEW_MODULE, OLD_MODULE])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_instructions_and_observations_of_either_module_path_and_protocol_are_read(module, protocol):
    config = RemotePolicyConfig("smolvla", "user/ckpt", features(), 20, "mps", {"a": "b"})
    read = read_instructions(dumps_as(config, module, protocol), 1 << 20)
    assert (read.policy_type, read.pretrained_name_or_path, read.actions_per_chunk, read.device) == (
        "smolvla", "user/ckpt", 20, "mps")
    assert read.rename_map == {"a": "b"}
    assert read.lerobot_features["observation.state"]["names"][2] == "joint2.pos"

    raw = observation(**{"joint0.pos": np.float32(3.5), "wrist": np.asfortranarray(np.ones((4, 5, 3), np.uint8) * 7),
                         "joint1.pos": np.float64(-1.25)})
    raw["wrist"][0, 1, 2] = 9
    sent = TimedObservation(1234.5, 17, raw, must_go=True)
    got = read_observation(dumps_as(sent, module, protocol), LIMIT)
    assert (got.timestamp, got.timestep, got.must_go) == (1234.5, 17, True)
    np.testing.assert_array_equal(got.observation["front"], raw["front"])
    np.testing.assert_array_equal(got.observation["wrist"], raw["wrist"])
    assert got.observation["joint0.pos"] == np.float32(3.5) and got.observation["joint1.pos"] == -1.25
    assert got.observation["task"] == "pick the cube"


def test_old_clients_without_rename_map_read_with_an_empty_one():
    config = RemotePolicyConfig("act", "/ckpt", features(), 5)
    del config.rename_map
    assert read_instructions(dumps_as(config), 1 << 20).rename_map == {}


def test_the_real_lerobot_classes_are_read():
    helpers = pytest.importorskip("lerobot.async_inference.helpers")
    config = helpers.RemotePolicyConfig("smolvla", "user/x", features(), 10, "cuda")
    assert read_instructions(pickle.dumps(config), 1 << 20).pretrained_name_or_path == "user/x"
    sent = helpers.TimedObservation(time.time(), 3, observation(), must_go=False)
    assert read_observation(pickle.dumps(sent), LIMIT).timestep == 3


class Gadget:
    def __init__(self, marker: Path, call=os.system) -> None:
        self.marker, self.call = marker, call

    def __reduce__(self):
        if self.call is eval:
            return (eval, (f"open({str(self.marker)!r}, 'w').close()",))
        return (self.call, (f"touch {self.marker}",))


def hostile_pickles(marker: Path) -> dict[str, bytes]:
    torch = pytest.importorskip("torch")
    proto0 = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    inst = f"(S'touch {marker}'\nios\nsystem\n.".encode()
    return {
        "os.system": pickle.dumps(Gadget(marker)),
        "builtins.eval": pickle.dumps(Gadget(marker, eval)),
        "protocol 0 GLOBAL+REDUCE": proto0,
        "INST opcode": inst,
        "gadget inside an observation": dumps_as(TimedObservation(1.0, 1, {"x": Gadget(marker)})),
        "gadget as instructions": pickle.dumps([Gadget(marker)]),
        "torch tensor (_rebuild_tensor_v2)": dumps_as(TimedObservation(1.0, 1, {"x": torch.zeros(3)})),
        "torch storage by persistent id": b"\x80\x04(X\x07\x00\x00\x00storageq\x00tQ.",
        "object array": dumps_as(TimedObservation(1.0, 1, {"x": np.array([Gadget(marker)], dtype=object)})),
        "the wrong record": dumps_as(RemotePolicyConfig("a", "b", {}, 1)),
        "not a pickle": b"\x00\x01garbage",
        "empty": b"",
    }


def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name, payload in hostile_pickles(marker).items():
        with pytest.raises(PayloadError):
            read_observation(payload, LIMIT)
        if name != "the wrong record":  # a valid RemotePolicyConfig
            with pytest.raises(PayloadError):
                read_instructions(payload, 1 << 20)
        assert not marker.exists(), name


def test_a_gadget_is_named_in_the_error():
    with pytest.raises(PayloadError, match=r"posix\.system|os\.system"):
        read_observation(pickle.dumps(Gadget(Path("/nonexistent/x"))), LIMIT)


class StateLiar(np.ndarray):
    """An array that pickles as numpy does, with the state it is given (shape, dtype, data)."""

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.fake_state)


def liar(shape: tuple[int, ...], data: bytes, code: str = "u1") -> np.ndarray:
    array = np.zeros(1).view(StateLiar)
    array.fake_state = (1, shape, np.dtype(code), False, data)
    return array


def _array_pickle(shape: tuple[int, ...], data: bytes, code: str = "u1") -> bytes:
    return dumps_as(TimedObservation(1.0, 1, {"x": liar(shape, data, code)}))


def test_an_array_whose_shape_claims_more_than_its_bytes_is_refused_without_allocating():
    with pytest.raises(PayloadError, match="needs"):
        read_observation(_array_pickle((2**39,), b"\x00" * 16), LIMIT)
    with pytest.raises(PayloadError, match="shape"):
        read_observation(_array_pickle((2**41, 2**41), b""), LIMIT)


def test_arrays_referring_to_one_buffer_many_times_are_bounded():
    frame = np.zeros((480, 640, 3), np.uint8)
    shared = frame.tobytes()
    sent = TimedObservation(1.0, 1, {f"cam{i}": liar(frame.shape, shared) for i in range(3)})
    payload = dumps_as(sent)
    assert len(payload) < 2 * frame.nbytes  # the pickle memo holds the bytes once, three arrays refer to them
    assert len(read_observation(payload, 4 * frame.nbytes).observation) == 3
    with pytest.raises(PayloadError, match="more bytes"):
        read_observation(payload, 2 * frame.nbytes)  # 3 frames decoded would exceed the budget


def test_oversize_payloads_are_refused_before_reading():
    with pytest.raises(PayloadError, match="exceeds"):
        read_observation(b"\x80\x04" + b"N" * 100, 50)
    with pytest.raises(PayloadError, match="exceed"):
        read_instructions(b"\x80\x04" + b"N" * 100, 50)


def test_deep_nesting_and_bad_fields_are_refused():
    nested: list = []
    for _ in range(30):
        nested = [nested]
    with pytest.raises(PayloadError, match="nested"):
        read_observation(dumps_as(TimedObservation(1.0, 1, {"x": nested})), LIMIT)
    with pytest.raises(PayloadError, match="actions_per_chunk"):
        read_instructions(dumps_as(RemotePolicyConfig("a", "b", {}, 0)), 1 << 20)
    with pytest.raises(PayloadError, match="timestep"):
        read_observation(dumps_as(TimedObservation(1.0, "3", {})), LIMIT)
    with pytest.raises(PayloadError, match="timestamp"):
        read_observation(dumps_as(TimedObservation(float("nan"), 3, {})), LIMIT)


def test_a_complex_or_string_dtype_is_refused():
    for value in (np.zeros(3, np.complex64), np.array(["a", "b"]), np.zeros(2, [("a", "f4")])):
        with pytest.raises(PayloadError, match="dtype"):
            read_observation(dumps_as(TimedObservation(1.0, 1, {"x": value})), LIMIT)


def test_the_decoder_runs_only_allowed_globals():
    """Every global a stock observation names is one of numpy's reconstructors or lerobot's records."""
    payload = dumps_as(TimedObservation(1.0, 1, observation()))
    globals_named = {arg for op, arg, _ in pickletools.genops(payload) if op.name in ("SHORT_BINUNICODE",)
                     and isinstance(arg, str) and ("numpy" in arg or "lerobot" in arg)}
    assert globals_named <= {"numpy.core.multiarray", "numpy._core.multiarray", "_reconstruct", "numpy",
                             "ndarray", "dtype", "scalar", NEW_MODULE}
