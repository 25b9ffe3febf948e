"""Robot tensors -> the batch LeRobot's preprocessor takes, and the documented noise rule.

A plan (`features`, from the python model's config) says which model inputs make each checkpoint feature:

    {"observation.state": ["joint_position", "gripper_position"],   # concatenated on the last axis, in order
     "observation.images.front": ["exterior_image_1_left"],
     "task": ["prompt"]}

Images arrive as uint8 [B, H, W, 3] (or [B, T, H, W, 3] from a GR00T client: the newest frame is used) and
enter the preprocessor as float32 [B, 3, H, W] in [0, 1], as LeRobot's own robots feed it; state as float32
[B, D]; the task as a list of B strings.

Noise rule (the LeRobot contract): for a row with seed s,
    noise = torch.randn(chunk_size, max_action_dim, generator=torch.Generator().manual_seed(s))
float32, drawn on the CPU, then moved to the policy's device; rows are stacked into [B, chunk_size,
max_action_dim] and passed as `predict_action_chunk(batch, noise=noise)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TASK = "task"
IMAGE_PREFIX = "observation.images."


def noise_for_seed(seed: int, chunk_size: int, max_action_dim: int) -> Any:
    import torch

    return torch.randn(chunk_size, max_action_dim, generator=torch.Generator().manual_seed(int(seed)))


def noise_batch(seeds: Sequence[int], chunk_size: int, max_action_dim: int, device: str) -> Any:
    import torch

    return torch.stack([noise_for_seed(seed, chunk_size, max_action_dim) for seed in seeds]).to(device)


def _texts(array: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in np.asarray(array, dtype=object).reshape(len(array), -1)[:, 0]]


def image_tensor(frames: np.ndarray) -> Any:
    """uint8 [B, H, W, 3] or [B, T, H, W, 3] -> float32 [B, 3, H, W] in [0, 1]."""
    import torch

    if frames.ndim == 5:
        frames = frames[:, -1]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [batch, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def assemble(plan: Mapping[str, Sequence[str]], inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The robot batch for LeRobot's preprocessor, from the stacked model inputs of the whole Triton batch."""
    import torch

    batch: dict[str, Any] = {}
    for feature, names in plan.items():
        if feature == TASK:
            batch[TASK] = _texts(inputs[names[0]])
        elif feature.startswith(IMAGE_PREFIX):
            batch[feature] = image_tensor(inputs[names[0]])
        else:
            parts = [np.asarray(inputs[name], np.float32).reshape(len(inputs[name]), -1) for name in names]
            batch[feature] = torch.from_numpy(np.concatenate(parts, axis=1))
    return batch


def stack_requests(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each input's rows of every request, in request order; a lone request's arrays as they are."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([request[name] for request in requests]) for name in requests[0]}


def same_shapes(requests: Sequence[Mapping[str, np.ndarray]]) -> list[list[int]]:
    """Indices of requests grouped by the shapes of their inputs (cameras of different sizes cannot share a
    tensor), in order of first appearance."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, request in enumerate(requests):
        key = tuple((name, array.shape[1:]) for name, array in sorted(request.items()) if array.dtype != object)
        groups.setdefault(key, []).append(index)
    return list(groups.values())
