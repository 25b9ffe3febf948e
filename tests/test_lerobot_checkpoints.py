"""LeRobot checkpoints refused at start-up with a message that says why, key maps checked against the
checkpoint's features, and the repository `serve --lerobot-policy` generates (no tritonserver here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.lerobot_checkpoints import RobotFeatures, build_pi, pi_runtime_installed
from openpi_triton.check import check_repository
from openpi_triton.cli import main
from openpi_triton.triton.lerobot_repository import (
    LeRobotPolicy,
    LeRobotPolicyError,
    parse_policy_flag,
    prepare,
    write_repository,
)
from openpi_triton.triton.policy import policy_from_config
from openpi_triton.triton.repository import read_model_config


def copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))


def refusal(policy: LeRobotPolicy) -> str:
    with pytest.raises(LeRobotPolicyError) as caught:
        prepare(policy)
    return str(caught.value)


def test_missing_files_are_named(smolvla_checkpoint, tmp_path) -> None:
    broken = copy(smolvla_checkpoint, tmp_path)
    (broken / "policy_postprocessor.json").unlink()
    message = refusal(LeRobotPolicy("arm", str(broken)))
    assert "--lerobot-policy arm" in message and "missing policy_postprocessor.json" in message


def test_no_such_directory(tmp_path) -> None:
    assert "no such directory" in refusal(LeRobotPolicy("arm", str(tmp_path / "nothing")))


def test_unsupported_policy_type(smolvla_checkpoint, tmp_path) -> None:
    from lerobot.policies.act.configuration_act import ACTConfig

    act = copy(smolvla_checkpoint, tmp_path)
    ACTConfig(input_features=RobotFeatures().input_features(),
              output_features=RobotFeatures().output_features())._save_pretrained(act)
    message = refusal(LeRobotPolicy("arm", str(act)))
    assert "policy type 'act' is not served" in message and "smolvla, pi0, pi05" in message


def test_config_that_is_no_policy(smolvla_checkpoint, tmp_path) -> None:
    broken = copy(smolvla_checkpoint, tmp_path)
    (broken / "config.json").write_text(json.dumps({"type": "smolvla", "chunk_size": "many"}))
    assert "config.json does not describe a LeRobot policy" in refusal(LeRobotPolicy("arm", str(broken)))


def test_key_map_that_cannot_feed_the_checkpoint(smolvla_checkpoint) -> None:
    # DROID robots send 7 joints + a gripper; this SO-100 checkpoint's state has 6 dims.
    message = refusal(LeRobotPolicy("arm", str(smolvla_checkpoint), keys="droid"))
    assert "'observation.state' has 6 dims in the checkpoint, the robot keys give 8" in message


def test_key_map_file_missing_a_camera(smolvla_checkpoint, tmp_path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"observation": {"top": "observation.images.front", "joints": "observation.state",
                                                "instruction": "task"}}))
    message = refusal(LeRobotPolicy("arm", str(smolvla_checkpoint), keys=str(keys)))
    assert "the checkpoint needs ['observation.images.wrist']" in message


def test_key_map_naming_a_feature_the_checkpoint_lacks(smolvla_checkpoint, tmp_path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"observation": {"top": "observation.images.top"}}))
    message = refusal(LeRobotPolicy("arm", str(smolvla_checkpoint), keys=str(keys)))
    assert "'observation.images.top', which is not a feature of the checkpoint" in message


def test_weights_that_do_not_fit_are_refused_not_served_as_noise(smolvla_checkpoint, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from openpi_policy.lerobot.checkpoint import CheckpointError, inspect_checkpoint
    from openpi_policy.lerobot.loading import load_checkpoint

    broken = copy(smolvla_checkpoint, tmp_path)
    tensors = load_file(str(broken / "model.safetensors"))
    kept = dict(list(tensors.items())[: len(tensors) // 2])  # LeRobot loads this with strict=False, silently
    save_file(kept, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensors of the policy are not in model\.safetensors.*refusing"):
        load_checkpoint(inspect_checkpoint(str(broken)))


def test_pi0_without_lerobots_transformers_is_refused_with_the_fix(tmp_path) -> None:
    if pi_runtime_installed():
        pytest.skip("LeRobot's transformers fork is installed here: pi0 loads")
    checkpoint = build_pi(tmp_path / "pi0", "pi0")
    message = refusal(LeRobotPolicy("pi", str(checkpoint)))
    assert "pi0 in LeRobot 0.4 needs LeRobot's fork of transformers" in message
    assert "fix/lerobot_openpi" in message


def test_generated_repository_passes_check_and_describes_the_policy(smolvla_checkpoint, tmp_path) -> None:
    repository = write_repository(tmp_path / "repo", [prepare(LeRobotPolicy("arm", str(smolvla_checkpoint)))])
    report = check_repository(repository)
    assert report.ok, report.problems
    assert report.policies == ["arm"]
    policy = policy_from_config(read_model_config(repository / "arm" / "config.pbtxt"))
    assert policy.models == ("arm", "arm_lerobot") and policy.seed_input == "seed"
    assert {spec.key: spec.describe() for spec in policy.inputs} == {
        "observation.images.front": "uint8 of shape [any, any, 3]",
        "observation.images.wrist": "uint8 of shape [any, any, 3]",
        "observation.state": "float32 of shape [6]", "task": "string of shape [1]"}
    lerobot = policy.metadata["lerobot"]
    assert lerobot["policy_type"] == "smolvla" and lerobot["pretrained_name_or_path"] == str(smolvla_checkpoint)
    assert lerobot["chunk_size"] == 10 and lerobot["n_action_steps"] == 10 and lerobot["action_names"] is None
    assert lerobot["output_features"] == {"action": {"type": "ACTION", "shape": [6]}}
    python_model = read_model_config(repository / "arm_lerobot" / "config.pbtxt")
    assert python_model["dynamic_batching"].get("max_queue_delay_microseconds", "0") == "0"


def test_gr00t_key_map_splits_an_so100_arm(smolvla_checkpoint, tmp_path) -> None:
    repository = write_repository(tmp_path / "repo", [prepare(LeRobotPolicy("arm", str(smolvla_checkpoint),
                                                                            keys="gr00t"))])
    policy = policy_from_config(read_model_config(repository / "arm" / "config.pbtxt"))
    assert policy.modality is not None and policy.modality.state.keys == ("single_arm", "gripper")
    assert policy.slices == {"action.single_arm": (10, 5), "action.gripper": (10, 1)}
    assert policy.offsets["action.gripper"] == (0, 5)


def test_lerobot_repository_command_refuses_with_one_line(smolvla_checkpoint, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["lerobot-repository", "--output", str(tmp_path / "repo"),
              "--lerobot-policy", f"arm={smolvla_checkpoint}", "--lerobot-keys", "arm=droid"])
    assert exited.value.code == 2
    assert "has 6 dims in the checkpoint" in capsys.readouterr().err


def test_policy_flag_format() -> None:
    assert parse_policy_flag("arm=lerobot/smolvla_base") == ("arm", "lerobot/smolvla_base")
    for bad in ("arm", "=path", "a b=path"):
        with pytest.raises(LeRobotPolicyError):
            parse_policy_flag(bad)


def test_noise_rule_is_the_documented_one() -> None:
    import torch

    from openpi_policy.lerobot.batch import noise_batch

    noise = noise_batch([3, 4], 10, 16, "cpu")
    assert noise.shape == (2, 10, 16) and noise.dtype == torch.float32
    assert torch.equal(noise[1], torch.randn(10, 16, generator=torch.Generator().manual_seed(4)))


def test_batch_assembly_concatenates_state_and_scales_images() -> None:
    from openpi_policy.lerobot.batch import assemble

    frames = np.full((2, 1, 4, 5, 3), 255, np.uint8)  # a GR00T video of one frame
    batch = assemble({"observation.state": ["arm", "grip"], "observation.images.top": ["top"], "task": ["text"]},
                     {"arm": np.ones((2, 1, 5), np.float32), "grip": np.zeros((2, 1, 1), np.float32), "top": frames,
                      "text": np.array([[b"a"], [b"b"]], dtype=object)})
    assert batch["observation.state"].shape == (2, 6) and batch["observation.state"][0, 5] == 0
    assert batch["observation.images.top"].shape == (2, 3, 4, 5) and float(batch["observation.images.top"].max()) == 1
    assert batch["task"] == ["a", "b"]


def test_check_command_knows_lerobot_policies(smolvla_checkpoint, capsys) -> None:
    main(["check", "--lerobot-policy", f"arm={smolvla_checkpoint}", "--lerobot-keys", "arm=gr00t"])
    assert "OK: serves 1 LeRobot policies: arm" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["check", "--lerobot-policy", f"arm={smolvla_checkpoint}", "--lerobot-keys", "arm=aloha"])
    assert exited.value.code == 2 and "has 6 dims in the checkpoint, the robot keys give 14" in capsys.readouterr().err


def test_a_hub_id_offline_without_a_cached_copy_is_refused(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # HF_HUB_OFFLINE=1 is set
    message = refusal(LeRobotPolicy("arm", "lerobot/smolvla_base"))
    assert "the Hub is unreachable or HF_HUB_OFFLINE=1 with no copy in the Hub cache" in message


def test_a_gated_tokenizer_that_cannot_load_is_refused_with_the_way_out(smolvla_checkpoint, tmp_path) -> None:
    gated = copy(smolvla_checkpoint, tmp_path)
    config = json.loads((gated / "policy_preprocessor.json").read_text())
    for step in config["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = "google/paligemma-3b-pt-224"  # as pi0 checkpoints name it
    (gated / "policy_preprocessor.json").write_text(json.dumps(config))
    message = refusal(LeRobotPolicy("arm", str(gated)))
    assert "its tokenizer google/paligemma-3b-pt-224 does not load" in message
    assert "HF_TOKEN" in message and "--lerobot-tokenizer" in message
    # A local copy given instead is served.
    from openpi_policy.lerobot.checkpoint import saved_tokenizer

    local = saved_tokenizer(smolvla_checkpoint)
    assert local and prepare(LeRobotPolicy("arm", str(gated), tokenizer=local)).metadata["policy_type"] == "smolvla"


def test_smolvla_whose_vlm_is_unreachable_is_refused(smolvla_checkpoint, tmp_path) -> None:
    moved = copy(smolvla_checkpoint, tmp_path)
    config = json.loads((moved / "config.json").read_text())
    config["vlm_model_name"] = str(tmp_path / "no_vlm_here")
    (moved / "config.json").write_text(json.dumps(config))
    assert "SmolVLA builds its VLM from vlm_model_name" in refusal(LeRobotPolicy("arm", str(moved)))
