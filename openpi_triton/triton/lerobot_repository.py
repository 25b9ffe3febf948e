"""A generated model repository serving LeRobot checkpoints: per policy NAME, an ensemble NAME (the policy
the front reads: metadata, key mapping) with one step, the python model NAME_lerobot, which runs LeRobot on
each Triton batch (`openpi_policy.lerobot.triton_model`).

Written by `openpi-triton serve --lerobot-policy NAME=PATH` into a directory of its own (never the checked-in
repository) and handed to tritonserver beside the main repository; `openpi-triton lerobot-repository`
writes the same for a Triton you run yourself. Checkpoints are checked here, in the serving process, before
tritonserver starts: a bad one is refused with a message naming what is wrong.

The python model's dynamic batcher waits for nobody (max_queue_delay 0): a lone robot goes straight in,
and robots that arrive while the model is busy form the next batch, which is when batching pays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openpi_triton.config import LEROBOT_MAX_BATCH_SIZE, NVIDIA_DRIVER_VERSION_FILE
from openpi_triton.triton.lerobot_keys import KeyMap, load_key_map

MODEL_SUFFIX = "_lerobot"
# The python model's RTC inputs (openpi_policy.lerobot.rtc.RTC_INPUTS) and the robot's frame keys.
RTC_LEFTOVER, RTC_LENGTH, RTC_DELAY = "rtc_leftover", "rtc_length", "rtc_delay"
RTC_KEYS = {"explicit": ["rtc/leftover", "rtc/delay"], "remembered": ["rtc/executed", "rtc/delay"]}
PYTHON_MODEL = "from openpi_policy.lerobot.triton_model import LeRobotModel as TritonPythonModel  # noqa: F401\n"


@dataclass(frozen=True)
class LeRobotPolicy:
    """One `--lerobot-policy NAME=PATH` with its options."""

    name: str
    source: str                      # a LeRobot policy directory or a Hub id
    keys: str | None = None          # key map: None (the checkpoint's names), a preset or a JSON file
    tokenizer: str | None = None     # instead of the tokenizer the saved preprocessor names
    device: str | None = None        # None: CUDA when this host has it (a KIND_GPU instance), else the CPU
    plugins: tuple[str, ...] = ()    # imported before the checkpoint is read
    max_batch_size: int = LEROBOT_MAX_BATCH_SIZE


@dataclass(frozen=True)
class PreparedPolicy:
    policy: LeRobotPolicy
    metadata: dict[str, Any]         # the `lerobot` entry of the handshake, with its `rtc` entry
    key_map: KeyMap
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> ModelConfig (JSON form)


class LeRobotPolicyError(ValueError):
    """A checkpoint or key map that cannot be served; the message says which policy and why."""


def prepare(policy: LeRobotPolicy) -> PreparedPolicy:
    """Check the checkpoint and key map (no weights are loaded) and build both model configs."""
    from openpi_policy.lerobot.checkpoint import CheckpointError, inspect_checkpoint
    from openpi_triton.triton.lerobot_keys import KeyMapError

    try:
        info = inspect_checkpoint(policy.source, policy.tokenizer, policy.plugins)
        metadata = {**info.metadata(), "rtc": rtc_metadata(info.config)}
        key_map = load_key_map(policy.keys, metadata)
    except (CheckpointError, KeyMapError) as error:
        raise LeRobotPolicyError(f"--lerobot-policy {policy.name}: {error}") from None
    if key_map.action_names is not None:
        metadata = {**metadata, "action_names": key_map.action_names}
    prepared = PreparedPolicy(policy, metadata, key_map)
    prepared.configs.update(_configs(prepared, _absolute(policy.source)))
    return prepared


def rtc_metadata(config: Any) -> dict[str, Any]:
    """The `rtc` entry of the handshake: how this policy does real-time chunking and the keys a robot sends
    (`openpi_triton.front.rtc`)."""
    from openpi_policy.lerobot.checkpoint import rtc_settings

    return {"supported": True, **rtc_settings(config), "chunk_size": int(config.chunk_size),
            "action_dim": int(config.output_features["action"].shape[-1]), "keys": RTC_KEYS}


def _tensor(name: str, datatype: str, dims: tuple[int, ...] | list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": datatype, "dims": [str(d) for d in dims]}


def _string(value: Any) -> dict[str, str]:
    return {"string_value": value if isinstance(value, str) else json.dumps(value)}


def _cuda_here() -> bool:
    """Whether this host has a CUDA device (then a policy without --lerobot-device runs on it). Read from the
    NVIDIA driver, not torch: `serve` imports no policy runtime (the python model loads torch, in Triton)."""
    return Path(NVIDIA_DRIVER_VERSION_FILE).exists()


def _absolute(path: str) -> str:
    """A local path made absolute (tritonserver's python stubs run elsewhere); a Hub id as it is."""
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def _configs(prepared: PreparedPolicy, checkpoint: str) -> dict[str, dict[str, Any]]:
    policy, key_map, meta = prepared.policy, prepared.key_map, prepared.metadata
    model = policy.name + MODEL_SUFFIX
    action_dim = meta["output_features"]["action"]["shape"][-1]
    inputs = [_tensor(k.input, k.datatype, k.dims) for k in key_map.keys] + [_tensor("seed", "TYPE_INT64", [1])]
    # RTC per row, always present so that rows with and without RTC share a Triton batch.
    inputs += [_tensor(RTC_LEFTOVER, "TYPE_FP32", [meta["chunk_size"], action_dim]),
               _tensor(RTC_LENGTH, "TYPE_INT64", [1]), _tensor(RTC_DELAY, "TYPE_INT64", [1])]
    outputs = [_tensor("actions", "TYPE_FP32", [meta["chunk_size"], action_dim])]
    on_gpu = (policy.device or ("cuda" if _cuda_here() else "cpu")).startswith("cuda")
    python_model = {
        "name": model, "backend": "python", "max_batch_size": policy.max_batch_size,
        "input": inputs, "output": outputs,
        "instance_group": [{"kind": "KIND_GPU" if on_gpu else "KIND_CPU", "count": 1}],
        "dynamic_batching": {"max_queue_delay_microseconds": "0"},
        "parameters": {
            "lerobot_checkpoint": _string(checkpoint), "lerobot_plan": _string(key_map.plan),
            "lerobot_tokenizer": _string(_absolute(policy.tokenizer) if policy.tokenizer else ""),
            "lerobot_plugins": _string([_absolute(plugin) for plugin in policy.plugins]),
            "lerobot_device": _string(policy.device or ""),
        },
    }
    parameters = {
        "policy_server_config": _string({"lerobot": {k: v for k, v in meta.items() if k != "rtc"},
                                         "key_map": key_map.name, "rtc": meta["rtc"]}),
        "observation_map": _string({k.key: k.input for k in key_map.keys}),
        "output_map": _string(key_map.outputs),
        "seed_input": _string("seed"),
        "rtc_inputs": _string({"leftover": RTC_LEFTOVER, "length": RTC_LENGTH, "delay": RTC_DELAY,
                               "output": "actions"}),
    }
    if key_map.modality is not None:
        parameters["gr00t_modality_config"] = _string(key_map.modality)
    names = [t["name"] for t in inputs]
    ensemble = {
        "name": policy.name, "platform": "ensemble", "max_batch_size": policy.max_batch_size,
        "input": inputs, "output": outputs, "parameters": parameters,
        "ensemble_scheduling": {"step": [{
            "model_name": model, "model_version": "-1",
            "input_map": {name: name for name in names}, "output_map": {"actions": "actions"}}]},
    }
    return {policy.name: ensemble, model: python_model}


def config_text(config: dict[str, Any]) -> str:
    """A ModelConfig in the JSON form -> config.pbtxt text (protobuf quotes the JSON parameters)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return text_format.MessageToString(message)


def write_repository(directory: Path, prepared: list[PreparedPolicy]) -> Path:
    """Write every prepared policy's two models into `directory` (created; existing models of the same name
    are replaced)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for item in prepared:
        for name, config in item.configs.items():
            version = directory / name / "1"
            version.mkdir(parents=True, exist_ok=True)
            header = (f"# Generated by openpi-triton for the LeRobot checkpoint {item.policy.source}; "
                      "regenerated on every start.\n")
            (directory / name / "config.pbtxt").write_text(header + config_text(config))
            if config.get("backend") == "python":
                (version / "model.py").write_text(PYTHON_MODEL)
    return directory


def parse_policy_flag(value: str) -> tuple[str, str]:
    """NAME=PATH -> (NAME, PATH), with a message for anything else."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise LeRobotPolicyError(f"expected NAME=PATH (a LeRobot policy directory or Hub id), got {value!r}")
    if not all(c.isalnum() or c in "_-" for c in name):
        raise LeRobotPolicyError(f"policy name {name!r}: use letters, digits, '_' and '-'")
    return name, path
