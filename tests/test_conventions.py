"""Answer conventions (parsed from a policy's parameters, refused by `check` when unknown), answers in the
client's array markers (read back with the real msgpack-numpy and openpi-client packages), and the
per-session camera history the droid_wam example keeps. No tritonserver."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from openpi_client import msgpack_numpy as openpi_msgpack_numpy

from openpi_policy.history import SessionHistory
from openpi_triton.check import check_repository
from openpi_triton.front.codec import MSGPACK_NUMPY_MARKERS, OPENPI_MARKERS, decode_frame
from openpi_triton.front.conventions import ClientEncoding, infer_answer, reset_answer
from openpi_triton.front.live_sessions import LiveSessions, SessionLimitReached
from openpi_triton.triton.policy import PolicyConfigError, policy_from_config
from openpi_triton.triton.repository import read_model_config

from .conftest import MODEL_REPOSITORY

WAM_CONFIG = MODEL_REPOSITORY / "droid_wam" / "config.pbtxt"


def wam_config(**convention_changes: object) -> dict:
    config = read_model_config(WAM_CONFIG)
    if convention_changes:
        parameter = config["parameters"]["answer_convention"]
        convention = {**json.loads(parameter["string_value"]), **convention_changes}
        parameter["string_value"] = json.dumps(convention)
    return config


def test_droid_wam_convention_is_read_from_its_parameters():
    policy = policy_from_config(wam_config())
    assert policy.stateful and policy.convention.handshake == "roboarena"
    assert policy.convention.infer == {"openpi": "bare", "msgpack_numpy": "map"}
    assert policy.convention.reset == {"openpi": "text", "msgpack_numpy": "text"}
    assert policy.convention.session_id_required
    assert policy.metadata["image_resolution"] == [180, 320] and policy.metadata["n_external_cameras"] == 2
    assert policy.describe()["answers"]["infer"]["openpi"] == "bare"


def test_a_policy_without_a_convention_answers_as_before():
    policy = policy_from_config(read_model_config(MODEL_REPOSITORY / "droid" / "config.pbtxt"))
    assert policy.convention.infer == {"openpi": "map", "msgpack_numpy": "map"}
    assert policy.convention.reset["openpi"] == "map" and not policy.convention.session_id_required


@pytest.mark.parametrize(("change", "message"), [
    ({"infer": "list"}, "'infer' for openpi clients is 'list'"),
    ({"reset": {"protobuf": "text"}}, "unknown client encodings ['protobuf']"),
    ({"handshake": "gr00t"}, "unknown handshake 'gr00t'"),
    ({"bare_output": "frame_count"}, "'bare_output' 'frame_count' is not a response key"),
    ({"answer": "bare"}, "unknown fields ['answer']"),
])
def test_an_unknown_convention_is_refused(change, message):
    with pytest.raises(PolicyConfigError, match="answer_convention") as refused:
        policy_from_config(wam_config(**change))
    assert message in str(refused.value)


def test_a_roboarena_handshake_must_hold_the_policy_server_config_fields():
    config = wam_config()
    metadata = json.loads(config["parameters"]["policy_server_config"]["string_value"])
    del metadata["action_space"]
    config["parameters"]["policy_server_config"]["string_value"] = json.dumps(metadata)
    with pytest.raises(PolicyConfigError, match=r"needs 'policy_server_config' fields \['action_space'\]"):
        policy_from_config(config)


def test_check_refuses_an_unknown_convention(tmp_path: Path):
    repository = tmp_path / "repository"
    shutil.copytree(MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    config_file = repository / "droid_wam" / "config.pbtxt"
    config_file.write_text(config_file.read_text().replace('"reset": "text"', '"reset": "binary"'))
    problems = check_repository(repository).problems
    assert any("droid_wam" in p and "'reset' for openpi clients is 'binary'" in p for p in problems), problems


# --- answers in the client's markers -------------------------------------------------------------------


def _encoding_of(frame: bytes) -> str:
    seen: set[str] = set()
    decode_frame(frame, seen)
    encoding = ClientEncoding(lambda **extra: extra)
    encoding.observe(seen)
    return encoding.markers


def test_the_client_encoding_is_that_of_its_frames():
    observation = {"observation/joint_position": np.zeros(7), "prompt": "pick"}
    assert _encoding_of(msgpack.packb(observation, default=msgpack_numpy.encode)) == MSGPACK_NUMPY_MARKERS
    assert _encoding_of(openpi_msgpack_numpy.packb(observation)) == OPENPI_MARKERS
    assert _encoding_of(msgpack.packb({"endpoint": "reset"})) == OPENPI_MARKERS  # no arrays yet: the default


def test_answers_decode_with_the_clients_own_packages():
    wam = policy_from_config(wam_config())
    actions = np.arange(24 * 8, dtype=np.float32).reshape(24, 8)
    response = {"actions": actions, "frames": np.array([3], np.int32)}
    mapped = msgpack_numpy.unpackb(infer_answer(wam, response, {"infer_ms": 1.0}, MSGPACK_NUMPY_MARKERS))
    np.testing.assert_array_equal(mapped["actions"], actions)
    assert mapped["frames"][0] == 3 and mapped["server_timing"] == {"infer_ms": 1.0}
    bare = openpi_msgpack_numpy.unpackb(infer_answer(wam, response, {"infer_ms": 1.0}, OPENPI_MARKERS))
    assert isinstance(bare, np.ndarray) and bare.shape == (24, 8)
    np.testing.assert_array_equal(bare, actions)
    assert reset_answer(wam, OPENPI_MARKERS) == "reset successful"
    droid = policy_from_config(read_model_config(MODEL_REPOSITORY / "droid" / "config.pbtxt"))
    assert openpi_msgpack_numpy.unpackb(reset_answer(droid, OPENPI_MARKERS)) == {"status": "reset successful"}
    scalar = msgpack_numpy.unpackb(infer_answer(droid, {"actions": np.float32(2.5)}, {}, MSGPACK_NUMPY_MARKERS))
    assert scalar["actions"] == 2.5 and isinstance(scalar["actions"], np.float32)


def test_live_sessions_are_capped():
    sessions = LiveSessions(2)
    sessions.open(), sessions.open()
    with pytest.raises(SessionLimitReached, match="limit of 2 live sessions"):
        sessions.open()
    sessions.close()
    sessions.open()


# --- the per-session camera history ------------------------------------------------------------------


def frame(value: int, shape=(180, 320, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_history_keeps_the_last_four_frames_of_each_session_newest_first():
    history = SessionHistory(["a", "b"], depth=4, max_sessions=8)
    counts = [history.add(1, start=step == 0, frames={"a": frame(10 + step), "b": frame(200)})[1] for step in range(6)]
    assert counts == [1, 2, 3, 4, 4, 4]
    mosaics, _ = history.add(1, start=False, frames={"a": frame(99, (480, 640, 3)), "b": frame(200)})
    tile = history.tile
    centre = tile // 2
    # Newest top-left, then the three before it in reading order (the oldest dropped).
    tiles = [int(mosaics["a"][r * tile + centre, c * tile + centre, 0]) for r in (0, 1) for c in (0, 1)]
    assert tiles == [99, 15, 14, 13]
    assert mosaics["a"].shape == (224, 224, 3)
    other, seen = history.add(2, start=True, frames={"a": frame(50), "b": frame(60)})
    assert seen == 1 and int(other["a"][centre, centre + tile, 0]) == 0  # a fresh session: one frame, black after
    assert history.add(1, start=True, frames={"a": frame(1), "b": frame(1)})[1] == 1  # START clears it
    history.end(1), history.end(2)
    assert len(history) == 0


def test_history_forgets_the_least_recently_used_session_past_its_bound():
    history = SessionHistory(["a"], depth=4, max_sessions=2)
    for sequence in (1, 2, 1, 3):
        history.add(sequence, start=False, frames={"a": frame(1)})
    assert len(history) == 2
    assert history.add(2, start=False, frames={"a": frame(1)})[1] == 1  # session 2 was evicted


def test_a_new_context_restarts_the_history():
    history = SessionHistory(["a"], depth=4, max_sessions=2)
    counts = [history.add(1, start=False, frames={"a": frame(1)}, context=prompt)[1]
              for prompt in (b"open", b"open", b"close", b"close", b"close")]
    assert counts == [1, 2, 1, 2, 3]
