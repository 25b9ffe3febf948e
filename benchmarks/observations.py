"""Benchmark payloads: the ensemble inputs that observations map to, as the front maps them
(`openpi_triton.front.observations`), from the very ensemble config Triton serves."""

from __future__ import annotations

import numpy as np

from openpi_triton.example_observations import Observation
from openpi_triton.front.observations import observation_to_tensors
from openpi_triton.triton.policy import Policy, policy_from_config


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
