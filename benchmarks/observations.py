"""Benchmark payloads: OpenPI observations and the ensemble inputs they map to.

The observation -> tensor mapping is the front's own (`frontend.policies`), built from the very
ensemble config Triton serves, so every benchmark row sends the same tensors the front would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from frontend.example_observations import FORMATS, Observation
from frontend.policies import Policy, observation_to_tensors, policy_from_config

DEFAULT_MODEL_REPOSITORY = Path("model_repository")


def observation_factory(format_name: str) -> Callable[[np.random.Generator], Observation]:
    if format_name not in FORMATS:
        raise ValueError(f"unknown observation format {format_name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[format_name]


def make_observations(format_name: str, count: int, seed: int = 0) -> list[Observation]:
    """`count` distinct synthetic observations (robots cycle through them)."""
    make = observation_factory(format_name)
    rng = np.random.default_rng(seed)
    return [make(rng) for _ in range(count)]


def policy_from_repository(model_repository: Path, policy: str) -> Policy:
    """The Policy of `<repo>/<policy>/config.pbtxt`, parsed as Triton would serve it.

    MessageToDict gives the JSON shape of Triton's get_model_config(as_json=True)["config"].
    """
    from google.protobuf.json_format import MessageToDict

    from openpi_policy.reference_pipeline import read_model_config

    path = Path(model_repository) / policy / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(f"no policy {policy!r} in {model_repository} ({path} is missing)")
    config = MessageToDict(read_model_config(path), preserving_proto_field_name=True)
    return policy_from_config(config)


def policy_from_triton(triton_url: str, policy: str) -> Policy:
    """The Policy as a running Triton serves it (what the front discovers)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)
    try:
        config = client.get_model_config(policy, as_json=True)["config"]
    finally:
        client.close()
    return policy_from_config(config)


def ensemble_inputs(policy: Policy, observation: Observation, seed: int | None = None) -> dict[str, np.ndarray]:
    """Observation -> the ensemble's input tensors (with the batch axis when the policy batches)."""
    return observation_to_tensors(policy, observation, seed)


def unbatched(policy: Policy, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the batch axis (perf_analyzer adds it back with -b)."""
    return {name: value[0] for name, value in tensors.items()} if policy.batched else dict(tensors)


def describe(observation: Observation) -> dict[str, Any]:
    """Key -> dtype/shape summary of one observation, for the results file."""
    summary: dict[str, Any] = {}
    for key, value in observation.items():
        if isinstance(value, dict):
            summary.update({f"{key}/{k}": v for k, v in describe(value).items()})
        elif isinstance(value, np.ndarray):
            summary[key] = f"{value.dtype}{list(value.shape)}"
        else:
            summary[key] = type(value).__name__
    return summary
