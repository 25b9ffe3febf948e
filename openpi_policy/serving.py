"""The serving wrapper: what `model.onnx` holds around a policy network (PyTorch; needed only to export).

A network such as `ReferencePolicy` takes float CHW images in [-1, 1], normalised state and returns
normalised actions. The wrapper gives the core graph the interface of `spec.CORE_INPUTS` instead:
uint8 HWC camera frames as robots send them, the raw state and the per-format norm tables. The work
it adds is pure tensor math, so it runs where the network runs (on the GPU under TensorRT) and no
float image ever crosses a process boundary.

Each step is a named submodule so that its ONNX nodes carry a stable prefix (`/serve_state/...`):
docker/build_engine.sh keeps the two normalisation steps in FP32 inside an FP16 engine by those names.
"""

from __future__ import annotations

import torch
from torch import nn

# The ONNX node-name prefixes of the steps that must stay in FP32 (see docker/build_engine.sh).
FP32_STEPS = ("serve_state", "serve_actions")


class Pixels(nn.Module):
    """uint8 [B, cameras, H, W, 3] -> float32 [B, cameras, 3, H, W] in [-1, 1], as openpi scales them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT converts a uint8 network input only to float, before any other layer.
        scaled = images.to(torch.float32) * (2.0 / 255.0) - 1.0
        return scaled.permute(0, 1, 4, 2, 3)


class Normalize(nn.Module):
    """(x - center) / scale per dimension; the table is [B, 2, D] (`spec.NORM_ROWS`)."""

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return (x - table[:, 0]) / table[:, 1]


class Unnormalize(nn.Module):
    """actions [B, H, D] * scale + center, the inverse of `Normalize` for every step of the chunk."""

    def forward(self, actions: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return actions * table[:, 1:2] + table[:, 0:1]


class ServingPolicy(nn.Module):
    """`network` behind the core interface: `spec.CORE_INPUTS` in that order, un-normalised actions out.

    `compute_dtype` (PyTorch serving, `openpi_policy.torch_core`): the network's dtype, such as float16.
    The serving steps stay float32 around it, as docker/build_engine.sh keeps them in the TensorRT engine;
    None (the ONNX export) adds no cast to the graph.
    """

    def __init__(self, network: nn.Module, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.network = network
        self.compute_dtype = compute_dtype
        self.serve_images = Pixels()
        self.serve_state = Normalize()
        self.serve_actions = Unnormalize()

    def forward(
        self, images: torch.Tensor, image_masks: torch.Tensor, state: torch.Tensor, state_norm: torch.Tensor,
        tokens: torch.Tensor, token_mask: torch.Tensor, noise: torch.Tensor, action_norm: torch.Tensor,
    ) -> torch.Tensor:
        pixels, normalised = self.serve_images(images), self.serve_state(state, state_norm)
        if self.compute_dtype is not None:
            pixels, normalised, noise = (x.to(self.compute_dtype) for x in (pixels, normalised, noise))
        actions = self.network(pixels, image_masks, normalised, tokens, token_mask, noise)
        if self.compute_dtype is not None:
            actions = actions.to(torch.float32)
        return self.serve_actions(actions, action_norm)

