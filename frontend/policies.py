"""Policies as the front sees them: read from Triton model configs, never hard-coded.

A policy is any model (usually an ensemble) whose config carries a `policy_server_config`
parameter. Its other parameters map OpenPI observation keys to model inputs and model outputs to
response keys; Triton's own input metadata gives each input's dtype and shape:

    observation_map  {"observation/state": "state", "images/cam_low": {"input": "cam_low", "optional": true}}
    output_map       {"actions": "actions"}
    seed_input       "seed"        (optional: the model input that receives the sampling seed)
    stateful         "true"        (optional: or the model has `sequence_batching` itself)

A missing optional observation is sent as an empty tensor (variable dims set to 0), which the
preprocess model reads as "absent" (for a camera: a zero image with mask False).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from frontend.codec import ProtocolError

TRITON_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


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
class Policy:
    name: str
    metadata: dict[str, Any]
    inputs: tuple[InputSpec, ...]
    outputs: dict[str, str]  # response key -> model output name
    seed_input: str | None
    stateful: bool
    batched: bool  # max_batch_size > 0: tensors carry a leading batch axis

    @property
    def required_keys(self) -> list[str]:
        return [spec.key for spec in self.inputs if not spec.optional]

    def describe(self) -> dict[str, Any]:
        """The entry for GET /v1/policies."""
        return {
            "name": self.name,
            "metadata": self.metadata,
            "observation": {spec.key: {"input": spec.name, "type": spec.describe(), "optional": spec.optional}
                            for spec in self.inputs},
            "outputs": list(self.outputs),
            "stateful": self.stateful,
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
    model_outputs = {o["name"] for o in config.get("output", [])}
    seed_input = params.get("seed_input") or None
    inputs = []
    for key, target in observation_map.items():
        entry = {"input": target} if isinstance(target, str) else dict(target)
        input_name = entry.get("input")
        if input_name not in model_inputs:
            raise PolicyConfigError(f"model {name!r}: observation key {key!r} maps to unknown input {input_name!r}")
        declared = model_inputs[input_name]
        inputs.append(InputSpec(
            key=key, name=input_name, datatype=declared["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES"),
            dims=tuple(int(d) for d in declared.get("dims", [])), optional=bool(entry.get("optional", False)),
        ))
    fed = {spec.name for spec in inputs} | ({seed_input} if seed_input else set())
    if seed_input and seed_input not in model_inputs:
        raise PolicyConfigError(f"model {name!r}: seed_input {seed_input!r} is not an input of the model")
    unfed = set(model_inputs) - fed
    if unfed:
        raise PolicyConfigError(f"model {name!r}: inputs {sorted(unfed)} are not in 'observation_map'")
    unknown = set(output_map.values()) - model_outputs
    if unknown:
        raise PolicyConfigError(f"model {name!r}: 'output_map' names unknown outputs {sorted(unknown)}")

    return Policy(
        name=name, metadata=metadata, inputs=tuple(inputs), outputs=dict(output_map), seed_input=seed_input,
        stateful="sequence_batching" in config or params.get("stateful", "").lower() == "true",
        batched=int(config.get("max_batch_size", 0)) > 0,
    )


def _as_bytes_tensor(value: Any, spec: InputSpec) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype.kind in "US" and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, np.generic) and value.dtype.kind in "US":
        value = value.item()
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise ProtocolError(f"key {spec.key!r}: expected a string, got {_describe_value(value)}")
    return np.array([value], dtype=object).reshape([max(d, 1) for d in spec.dims] or [1])


def _describe_value(value: Any) -> str:
    if isinstance(value, (np.ndarray, np.generic)):
        return f"{value.dtype} of shape {list(np.shape(value))}"
    return type(value).__name__


def _castable(source: np.dtype, target: np.dtype) -> bool:
    # Floats may narrow (OpenPI clients send float64 state to float32 models; overflow is caught after
    # the cast), integers may not: a uint16 frame must not wrap silently into a uint8 image.
    return np.can_cast(source, target, "same_kind" if target.kind == "f" else "safe")


def _as_numeric_tensor(value: Any, spec: InputSpec) -> np.ndarray:
    target = TRITON_DTYPES[spec.datatype]
    if isinstance(value, (bool, int, float, list)):
        try:
            value = np.asarray(value)
        except (ValueError, OverflowError):  # ragged nested lists, integers past 64 bits
            raise ProtocolError(f"key {spec.key!r}: expected {spec.describe()}, got a list that is not "
                                "a rectangular array of numbers") from None
    if not isinstance(value, (np.ndarray, np.generic)) or value.dtype.kind not in "biuf":
        raise ProtocolError(f"key {spec.key!r}: expected {spec.describe()}, got {_describe_value(value)}")
    array = np.asarray(value)
    shape_ok = array.ndim == len(spec.dims) and all(
        d < 0 or d == n for d, n in zip(spec.dims, array.shape, strict=True)
    )
    if not shape_ok or not _castable(array.dtype, target):
        raise ProtocolError(f"key {spec.key!r}: expected {spec.describe()}, got {_describe_value(array)}")
    with np.errstate(over="ignore"):
        cast = array.astype(target, copy=False)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        limit = np.finfo(target).max
        raise ProtocolError(f"key {spec.key!r}: contains NaN or inf (or values beyond ±{limit:.3g} for {target})")
    return cast


def _absent(spec: InputSpec) -> np.ndarray:
    """What an optional key that was not sent becomes: an empty frame for a camera (the preprocess
    turns it into a masked zero image), an empty string for a prompt (the default prompt)."""
    shape = [max(d, 0) for d in spec.dims]
    if spec.datatype == "BYTES":
        return np.full([max(d, 1) for d in spec.dims] or [1], b"", dtype=object)
    return np.zeros(shape, TRITON_DTYPES[spec.datatype])


def observation_to_tensors(policy: Policy, observation: Mapping[str, Any], seed: int | None) -> dict[str, np.ndarray]:
    """Validate an observation against the policy and return the model's input tensors.

    Raises ProtocolError naming the key, what was expected and what came.
    """
    missing = [key for key in policy.required_keys if key not in observation]
    if missing:
        raise ProtocolError(
            f"policy {policy.name!r} needs observation keys {missing} which are missing; "
            f"got {sorted(observation)[:20]}"
        )
    tensors: dict[str, np.ndarray] = {}
    for spec in policy.inputs:
        if spec.key not in observation:
            tensors[spec.name] = _absent(spec)
        elif spec.datatype == "BYTES":
            tensors[spec.name] = _as_bytes_tensor(observation[spec.key], spec)
        else:
            tensors[spec.name] = _as_numeric_tensor(observation[spec.key], spec)
    if policy.seed_input:
        chosen = secrets.randbits(63) if seed is None else seed
        tensors[policy.seed_input] = np.array([chosen], np.int64)
    if policy.batched:
        tensors = {name: value[None] for name, value in tensors.items()}
    return tensors


def _response_value(value: np.ndarray) -> Any:
    """Numbers stay arrays; text (Triton BYTES, object arrays that msgpack-numpy cannot carry) becomes
    a string, or nested lists of strings for several."""
    if value.dtype != object:
        return value
    texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    return texts[0] if value.size == 1 else np.array(texts, dtype=object).reshape(value.shape).tolist()


def unbatch(policy: Policy, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Model outputs -> response map under the policy's response keys."""
    return {key: _response_value(outputs[name][0] if policy.batched else outputs[name])
            for key, name in policy.outputs.items()}
