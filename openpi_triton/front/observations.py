"""Observations <-> tensors: an OpenPI observation checked against a policy's inputs and turned into
its model's typed tensors, and the model's outputs turned back into the robot's response map.

A missing optional observation is sent as an empty tensor (variable dims set to 0), which the
preprocess model reads as "absent" (for a camera: a zero image with mask False).

An OpenPI robot sends one observation; a GR00T client may send B environments at once (`rows=B`): every
value then has a leading axis of B (strings: a list of B), and they become B rows of one Triton call.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from openpi_triton.front.codec import ProtocolError
from openpi_triton.front.rtc import rtc_tensors
from openpi_triton.triton.policy import InputSpec, Policy
from openpi_triton.triton.tensors import TRITON_DTYPES


def _text_bytes(value: Any, spec: InputSpec) -> bytes:
    if isinstance(value, np.ndarray) and value.dtype.kind in "US" and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, np.generic) and value.dtype.kind in "US":
        value = value.item()
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise ProtocolError(f"key {spec.key!r}: expected a string, got {_describe_value(value)}")
    return value


def _as_bytes_tensor(value: Any, spec: InputSpec, rows: int | None) -> np.ndarray:
    shape = [max(d, 1) for d in spec.dims] or [1]
    if rows is None:
        return np.array([_text_bytes(value, spec)], dtype=object).reshape(shape)
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        value = value.reshape(-1).tolist()
    if not isinstance(value, (list, tuple)) or len(value) != rows:
        raise ProtocolError(f"key {spec.key!r}: expected a list of {rows} strings (one per environment), "
                            f"got {_describe_value(value) if not isinstance(value, (list, tuple)) else len(value)}")
    return np.array([_text_bytes(item, spec) for item in value], dtype=object).reshape([rows, *shape])


def _describe_value(value: Any) -> str:
    if isinstance(value, (np.ndarray, np.generic)):
        return f"{value.dtype} of shape {list(np.shape(value))}"
    return type(value).__name__


def _castable(source: np.dtype, target: np.dtype) -> bool:
    # Floats may narrow (OpenPI clients send float64 state to float32 models; overflow is caught after
    # the cast), integers may not: a uint16 frame must not wrap silently into a uint8 image.
    return np.can_cast(source, target, "same_kind" if target.kind == "f" else "safe")


def _as_numeric_tensor(value: Any, spec: InputSpec, rows: int | None) -> np.ndarray:
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
    dims = spec.dims if rows is None else (rows, *spec.dims)
    shape_ok = array.ndim == len(dims) and all(d < 0 or d == n for d, n in zip(dims, array.shape, strict=True))
    if not shape_ok or not _castable(array.dtype, target):
        expected = spec.describe() if rows is None else f"{rows} environments of {spec.describe()}"
        raise ProtocolError(f"key {spec.key!r}: expected {expected}, got {_describe_value(array)}")
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


def observation_to_tensors(policy: Policy, observation: Mapping[str, Any], seed: int | None,
                           rows: int | None = None) -> dict[str, np.ndarray]:
    """Validate an observation against the policy and return the model's input tensors; with `rows`, an
    observation of that many environments (leading axis) becomes as many rows of one call, each with its
    own seed (`seed`, `seed + 1`, ... when given).

    Raises ProtocolError naming the key, what was expected and what came.
    """
    if rows is not None and not policy.batched:
        raise ProtocolError(f"policy {policy.name!r} takes one observation per call, not {rows} environments")
    missing = [key for key in policy.required_keys if key not in observation]
    if missing:
        raise ProtocolError(
            f"policy {policy.name!r} needs observation keys {missing} which are missing; "
            f"got {sorted(observation)[:20]}"
        )
    tensors: dict[str, np.ndarray] = {}
    for spec in policy.inputs:
        if spec.key not in observation:
            absent = _absent(spec)
            tensors[spec.name] = absent if rows is None else np.repeat(absent[None], rows, axis=0)
        elif spec.datatype == "BYTES":
            tensors[spec.name] = _as_bytes_tensor(observation[spec.key], spec, rows)
        else:
            tensors[spec.name] = _as_numeric_tensor(observation[spec.key], spec, rows)
    if policy.seed_input:
        seeds = np.array([secrets.randbits(63) if seed is None else (seed + row) % 2**63
                          for row in range(rows or 1)], np.int64)
        tensors[policy.seed_input] = seeds if rows is None else seeds[:, None]
    if policy.batched and rows is None:
        tensors = {name: value[None] for name, value in tensors.items()}
    if policy.rtc is not None:  # rows without RTC; a frame's RTC keys replace them (`front.rtc`)
        tensors.update(rtc_tensors(policy.rtc, None, rows or 1))
    return tensors


def _response_value(value: np.ndarray) -> Any:
    """Numbers stay arrays; text (Triton BYTES, object arrays that msgpack-numpy cannot carry) becomes
    a string, or nested lists of strings for several."""
    if value.dtype != object:
        return value
    texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    return texts[0] if value.size == 1 else np.array(texts, dtype=object).reshape(value.shape).tolist()


def unbatch(policy: Policy, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Model outputs -> response map under the policy's response keys, each cut to its `slice` (a view)."""
    response = {}
    for key, name in policy.outputs.items():
        value = outputs[name][0] if policy.batched else outputs[name]
        response[key] = _response_value(value[policy.cut(key)])
    return response


def rows_response(policy: Policy, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model outputs of a call with several rows -> response key -> [rows, ...] arrays, each row cut like
    `unbatch` cuts one (views)."""
    response = {}
    for key, name in policy.outputs.items():
        value = outputs[name][(slice(None), *policy.cut(key))]
        if value.dtype == object:
            raise ProtocolError(f"policy {policy.name!r} output {key!r} is text; GR00T replies carry arrays only")
        response[key] = value
    return response


def nonfinite_answer(policy: Policy, response: Mapping[str, Any]) -> str | None:
    """Why this answer (`unbatch` or `rows_response`) must not reach a robot, or None: a robot must never
    act on NaN or inf. Only what the robot gets is checked (its cut), so padding it never sees cannot fail
    its step."""
    for key, value in response.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "fc" and not np.isfinite(value).all():
            name = policy.outputs[key]
            output = repr(key) if key == name else f"{key!r} (model output {name!r})"
            return (f"policy {policy.name!r} returned NaN or inf in output {output}; not sending it. The observation "
                    "may lie far outside what the policy was trained on (for example a state beyond its "
                    "normalisation range)")
    return None
