"""Policies as the front sees them: read from Triton model configs, never hard-coded.

A policy is any model (usually an ensemble) whose config carries a `policy_server_config`
parameter. Its other parameters map OpenPI observation keys to model inputs and model outputs to
response keys; Triton's own input metadata gives each input's dtype and shape:

    observation_map  {"observation/state": "state", "images/cam_low": {"input": "cam_low", "optional": true}}
    output_map       {"actions": "actions"}, or {"actions": {"output": "actions", "slice": [10, 7]}}
    seed_input       "seed"        (optional: the model input that receives the sampling seed)
    stateful         "true"        (optional: or the model has `sequence_batching` itself)
    gr00t_modality_config  {...}   (optional: what a GR00T client is told; see `triton.modality`)
    answer_convention      {...}   (optional: handshake, infer and reset answer forms; see `triton.conventions`)
    rtc_inputs  {"leftover": "rtc_leftover", "length": "rtc_length", "delay": "rtc_delay", "output": "actions"}
                (optional: the policy does real-time chunking per row; see `front.rtc`)

A `slice` answers with `slice[i]` entries of each axis i of one example, from `offset[i]` (0 unless an
`offset` is given): {"output": "actions", "slice": [16, 1], "offset": [0, 5]} is actions[:16, 5:6].
One policy core serves robots of different horizons and action dims, and several response keys
(an arm and a gripper) can each take their part of one output; a cut is a view, cheaper than any
model step. How observations become these inputs, and outputs responses, is the front's business
(`openpi_triton.front.observations`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from openpi_triton.triton.conventions import (
    DEFAULT_CONVENTION,
    AnswerConvention,
    ConventionError,
    convention_from_parameter,
)
from openpi_triton.triton.modality import ModalityConfig, observation_key, parse_modality_config
from openpi_triton.triton.tensors import TRITON_DTYPES, triton_datatype


class PolicyConfigError(ValueError):
    """A model's parameters do not describe a usable policy."""


@dataclass(frozen=True)
class InputSpec:
    key: str          # OpenPI observation key, e.g. "observation/state"
    name: str         # model input name
    datatype: str     # Triton datatype, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch axis; -1 = any size
    optional: bool = False

    def describe(self) -> str:
        kind = "string" if self.datatype == "BYTES" else str(TRITON_DTYPES[self.datatype])
        dims = ", ".join("any" if d < 0 else str(d) for d in self.dims)
        return f"{kind} of shape [{dims}]"


@dataclass(frozen=True)
class RtcSpec:
    """The model inputs of a policy's real-time chunking: the leftover [chunk_size, action_dim] of the
    robot's previous chunk in its units (zero padded), its length (0: no RTC) and the inference delay."""

    leftover: str
    length: str
    delay: str
    output: str           # the model output whose chunk a session remembers
    chunk_size: int
    action_dim: int


@dataclass(frozen=True)
class Policy:
    name: str
    metadata: dict[str, Any]
    inputs: tuple[InputSpec, ...]
    outputs: dict[str, str]  # response key -> model output name
    seed_input: str | None
    stateful: bool
    batched: bool  # max_batch_size > 0: tensors carry a leading batch axis
    # response key -> how many entries of each axis of one example the robot gets ...
    slices: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # ... and from where, one start per sliced axis (keys without an offset start at 0)
    offsets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Every model a call goes through: the policy's own and, for an ensemble, each step's.
    models: tuple[str, ...] = ()
    max_batch_size: int = 0  # rows of one call (Triton's max_batch_size; 0: not batched)
    modality: ModalityConfig | None = None  # for GR00T clients
    convention: AnswerConvention = DEFAULT_CONVENTION  # how answers look on the wire
    rtc: RtcSpec | None = None  # real-time chunking, when the policy does it

    @property
    def required_keys(self) -> list[str]:
        return [spec.key for spec in self.inputs if not spec.optional]

    def cut(self, key: str) -> tuple[slice, ...]:
        """The index of response `key` in one example of its output: () when it takes the whole output."""
        sizes = self.slices.get(key, ())
        starts = self.offsets.get(key, (0,) * len(sizes))
        return tuple(slice(start, start + size) for start, size in zip(starts, sizes, strict=True))

    def describe(self) -> dict[str, Any]:
        """The entry for GET /v1/policies."""
        return {
            "name": self.name,
            "metadata": self.metadata,
            "observation": {spec.key: {"input": spec.name, "type": spec.describe(), "optional": spec.optional}
                            for spec in self.inputs},
            "outputs": list(self.outputs),
            "stateful": self.stateful,
            "gr00t": self.modality is not None,
            "answers": self.convention.describe(),
            "rtc": self.metadata.get("rtc", {"supported": False}) if self.rtc else {"supported": False},
        }


def _parameters(config: Mapping[str, Any]) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def _json_parameter(params: Mapping[str, str], key: str, model: str, default: Any) -> Any:
    if key not in params:
        return default
    try:
        return json.loads(params[key])
    except json.JSONDecodeError as error:
        raise PolicyConfigError(f"model {model!r}: parameter '{key}' is not valid JSON ({error})") from None


def is_policy(config: Mapping[str, Any]) -> bool:
    return "policy_server_config" in config.get("parameters", {})


def policy_from_config(config: Mapping[str, Any]) -> Policy:
    """Build a Policy from a model config as Triton returns it (JSON form of ModelConfig)."""
    name = config["name"]
    params = _parameters(config)
    metadata = _json_parameter(params, "policy_server_config", name, {})
    observation_map = _json_parameter(params, "observation_map", name, None)
    output_map = _json_parameter(params, "output_map", name, None)
    if not isinstance(metadata, dict):
        raise PolicyConfigError(f"model {name!r}: 'policy_server_config' must be a JSON object")
    if not isinstance(observation_map, dict) or not isinstance(output_map, dict):
        raise PolicyConfigError(f"model {name!r}: needs JSON object parameters 'observation_map' and 'output_map'")

    model_inputs = {i["name"]: i for i in config.get("input", [])}
    model_outputs = {o["name"]: tuple(int(d) for d in o.get("dims", [])) for o in config.get("output", [])}
    seed_input = params.get("seed_input") or None
    inputs = []
    for key, target in observation_map.items():
        entry = {"input": target} if isinstance(target, str) else dict(target)
        input_name = entry.get("input")
        if input_name not in model_inputs:
            raise PolicyConfigError(f"model {name!r}: observation key {key!r} maps to unknown input {input_name!r}")
        declared = model_inputs[input_name]
        inputs.append(InputSpec(
            key=key, name=input_name, datatype=triton_datatype(declared["data_type"]),
            dims=tuple(int(d) for d in declared.get("dims", [])), optional=bool(entry.get("optional", False)),
        ))
    rtc = _rtc_spec(name, _json_parameter(params, "rtc_inputs", name, None), model_inputs)
    fed = {spec.name for spec in inputs} | ({seed_input} if seed_input else set())
    if rtc is not None:
        fed |= {rtc.leftover, rtc.length, rtc.delay}
    if seed_input and seed_input not in model_inputs:
        raise PolicyConfigError(f"model {name!r}: seed_input {seed_input!r} is not an input of the model")
    unfed = set(model_inputs) - fed
    if unfed:
        raise PolicyConfigError(f"model {name!r}: inputs {sorted(unfed)} are not in 'observation_map'")
    outputs, slices, offsets = {}, {}, {}
    for key, target in output_map.items():
        entry = {"output": target} if isinstance(target, str) else target
        if not isinstance(entry, dict) or not isinstance(entry.get("output"), str):
            raise PolicyConfigError(f"model {name!r}: 'output_map' entry {key!r} must be an output name or "
                                    '{"output": name, "slice": [sizes], "offset": [starts]}')
        outputs[key] = entry["output"]
        if "offset" in entry and "slice" not in entry:
            raise PolicyConfigError(f"model {name!r}: 'output_map' {key!r} has an 'offset' but no 'slice'")
        if "slice" in entry:
            dims = model_outputs.get(entry["output"])
            slices[key] = _slice(name, key, entry["slice"], dims)
            if "offset" in entry:
                offsets[key] = _offset(name, key, entry["offset"], slices[key], dims)
    unknown = set(outputs.values()) - set(model_outputs)
    if unknown:
        raise PolicyConfigError(f"model {name!r}: 'output_map' names unknown outputs {sorted(unknown)}")
    try:
        convention = convention_from_parameter(_json_parameter(params, "answer_convention", name, None),
                                               metadata, outputs)
    except ConventionError as error:
        raise PolicyConfigError(f"model {name!r}: 'answer_convention' {error}") from None

    policy = Policy(
        name=name, metadata=metadata, inputs=tuple(inputs), outputs=outputs, seed_input=seed_input,
        stateful="sequence_batching" in config or params.get("stateful", "").lower() == "true",
        batched=int(config.get("max_batch_size", 0)) > 0, slices=slices, offsets=offsets,
        models=(name, *dict.fromkeys(step["model_name"] for step in
                                     config.get("ensemble_scheduling", {}).get("step", []))),
        max_batch_size=int(config.get("max_batch_size", 0)), convention=convention,
        rtc=rtc,
    )
    if "gr00t_modality_config" not in params:
        return policy
    try:
        modality = parse_modality_config(_json_parameter(params, "gr00t_modality_config", name, None))
        _check_modality(modality, policy)
    except ValueError as error:
        raise PolicyConfigError(f"model {name!r}: 'gr00t_modality_config' {error}") from None
    return replace(policy, modality=modality)


def _rtc_spec(model: str, entry: Any, model_inputs: Mapping[str, Any]) -> RtcSpec | None:
    if entry is None:
        return None
    fields = ("leftover", "length", "delay", "output")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in fields):
        raise PolicyConfigError(f"model {model!r}: 'rtc_inputs' must name {list(fields)}")
    missing = [entry[key] for key in fields[:3] if entry[key] not in model_inputs]
    if missing:
        raise PolicyConfigError(f"model {model!r}: 'rtc_inputs' names unknown inputs {missing}")
    dims = [int(d) for d in model_inputs[entry["leftover"]].get("dims", [])]
    if len(dims) != 2 or min(dims) <= 0:
        raise PolicyConfigError(f"model {model!r}: RTC leftover input must be [chunk_size, action_dim], got {dims}")
    return RtcSpec(entry["leftover"], entry["length"], entry["delay"], entry["output"], dims[0], dims[1])


def _slice(model: str, key: str, sizes: Any, dims: tuple[int, ...] | None) -> tuple[int, ...]:
    """A validated `slice`: positive sizes, no more axes than the output has, none past a fixed dim."""
    valid = isinstance(sizes, list) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
    if not valid or not sizes:
        raise PolicyConfigError(f"model {model!r}: 'output_map' {key!r} slice must be a list of positive "
                                f"integers, got {sizes!r}")
    if dims is not None:
        too_big = len(sizes) > len(dims) or any(0 < d < n for n, d in zip(sizes, dims, strict=False))
        if too_big:
            raise PolicyConfigError(f"model {model!r}: 'output_map' {key!r} slice {sizes} does not fit the "
                                    f"output's dims {list(dims)}")
    return tuple(sizes)


def _offset(model: str, key: str, starts: Any, sizes: tuple[int, ...], dims: tuple[int, ...] | None) -> tuple[int, ...]:
    """A validated `offset`: non-negative starts, one per sliced axis at most, the cut inside fixed dims."""
    valid = isinstance(starts, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in starts)
    if not valid or len(starts) > len(sizes):
        raise PolicyConfigError(f"model {model!r}: 'output_map' {key!r} offset must be a list of at most "
                                f"{len(sizes)} non-negative integers (one per slice axis), got {starts!r}")
    if dims is not None and any(0 < d < start + size for start, size, d in zip(starts, sizes, dims, strict=False)):
        raise PolicyConfigError(f"model {model!r}: 'output_map' {key!r} slice {list(sizes)} at offset {starts} "
                                f"does not fit the output's dims {list(dims)}")
    return (*starts, *[0] * (len(sizes) - len(starts)))


def _check_modality(config: ModalityConfig, policy: Policy) -> None:
    """That what GR00T clients are told to send feeds `policy`, and its action keys are outputs of the
    right horizon; ValueError says what does not fit."""
    inputs = {spec.key: spec for spec in policy.inputs}
    sent = set()
    for name, rank, what in (("video", 4, "[T, H, W, 3]"), ("state", 2, "[T, D]")):
        modality = config.modality(name)
        for key in modality.keys:
            flat = observation_key(name, key)
            spec = inputs.get(flat)
            if spec is None or spec.datatype == "BYTES":
                raise ValueError(f"{name} key {key!r}: the policy has no numeric observation {flat!r}")
            if len(spec.dims) != rank or spec.dims[0] not in (-1, modality.history):
                raise ValueError(f"{name} key {key!r}: observation {flat!r} has dims {list(spec.dims)}, GR00T "
                                 f"sends {what} with T = {modality.history} (len of delta_indices)")
            sent.add(flat)
    language = inputs.get(config.language_key)
    if language is None or language.datatype != "BYTES":
        raise ValueError(f"language key {config.language_key!r} is not a string observation of the policy")
    sent.add(config.language_key)
    unsent = [key for key in policy.required_keys if key not in sent]
    if unsent:
        raise ValueError(f"the policy needs observations {unsent} that no modality key provides")
    for key in config.action.keys:
        flat = observation_key("action", key)
        if flat not in policy.outputs:
            raise ValueError(f"action key {key!r}: 'output_map' has no {flat!r}")
        horizon = policy.slices.get(flat, (None,))[0]
        if horizon != config.action.history:
            raise ValueError(f"action key {key!r}: {flat!r} needs a slice whose horizon is {config.action.history} "
                             f"(len of action delta_indices), got {list(policy.slices.get(flat, ())) or 'none'}")
