"""A small policy with pi0's shape, for tests, demos and benchmarks (PyTorch; needed only to export).

Prefix: a patch encoder per camera, prompt-token embeddings and a state token, mixed by a few
transformer blocks; masked cameras and padding tokens are hidden from attention. Suffix: an action
expert (self-attention over the action chunk, cross-attention to the prefix) predicts the flow
velocity, and 10 Euler steps from t=1 to t=0 are unrolled in the graph, so the ONNX holds no loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from openpi_policy import spec

WIDTH = 256
HEADS = 4
PREFIX_LAYERS = 2
EXPERT_LAYERS = 2
PATCH = 16
MASKED = -1e9


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], key_bias: torch.Tensor | None
    ) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = kv
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if key_bias is not None:
            scores = scores + key_bias[:, None, None, :]
        mixed = scores.softmax(-1) @ v
        return self.out(mixed.transpose(1, 2).flatten(-2))


class Block(nn.Module):
    """Pre-norm transformer block; with `cross`, it also attends to a context sequence."""

    def __init__(self, width: int, heads: int, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.cross_norm = nn.LayerNorm(width) if cross else None
        self.cross = Attention(width, heads) if cross else None
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(
        self, x: torch.Tensor, self_bias: torch.Tensor | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        context_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, self.attn.keys_values(h), self_bias)
        if self.cross is not None:
            x = x + self.cross(self.cross_norm(x), context_kv, context_bias)
        return x + self.mlp(self.norm2(x))


class CameraEncoder(nn.Module):
    """224x224 image -> 7x7 = 49 tokens: a 16x16 patchify conv, then a 2x2 merge."""

    tokens = (spec.IMAGE_SIZE // PATCH // 2) ** 2

    def __init__(self, width: int) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, width, PATCH, stride=PATCH)
        self.merge = nn.Conv2d(width, width, 2, stride=2)
        self.position = nn.Parameter(torch.randn(self.tokens, width) * 0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.merge(nn.functional.gelu(self.patchify(image)))
        return x.flatten(2).transpose(1, 2) + self.position


def time_embedding(t: float, width: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal embedding of the flow time (t is a Python constant per unrolled step), on the device
    and in the dtype of `like`. The width is a Python int so the export folds it all into a constant.
    Computed in float32 whatever `like`'s dtype: float16 holds angles up to 1000 only to 0.5 rad."""
    half = width // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=like.device) / half)
    angles = t * 1000.0 * freqs
    return torch.cat([angles.sin(), angles.cos()]).to(like.dtype)


class ReferencePolicy(nn.Module):
    def __init__(self, width: int = WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        self.width = width
        self.cameras = nn.ModuleList(CameraEncoder(width) for _ in range(spec.NUM_CAMERAS))
        self.token_embedding = nn.Embedding(260, width)  # byte tokenizer (258) with headroom
        self.token_position = nn.Parameter(torch.randn(spec.MAX_TOKEN_LEN, width) * 0.02)
        self.state_proj = nn.Linear(spec.STATE_DIM, width)
        self.prefix_blocks = nn.ModuleList(Block(width, heads) for _ in range(PREFIX_LAYERS))
        self.action_in = nn.Linear(spec.ACTION_DIM, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.action_position = nn.Parameter(torch.randn(spec.ACTION_HORIZON, width) * 0.02)
        self.expert_blocks = nn.ModuleList(Block(width, heads, cross=True) for _ in range(EXPERT_LAYERS))
        self.action_out = nn.Linear(width, spec.ACTION_DIM)

    def encode_prefix(
        self, images: torch.Tensor, image_masks: torch.Tensor, state: torch.Tensor,
        tokens: torch.Tensor, token_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        camera_tokens = [encoder(images[:, i]) for i, encoder in enumerate(self.cameras)]
        text = self.token_embedding(tokens) + self.token_position
        state_token = self.state_proj(state)[:, None, :]
        prefix = torch.cat([*camera_tokens, text, state_token], dim=1)

        per_token = CameraEncoder.tokens
        camera_keep = image_masks[:, :, None].expand(-1, -1, per_token).flatten(1)
        keep = torch.cat([camera_keep, token_mask, torch.ones_like(token_mask[:, :1])], dim=1)
        bias = (1.0 - keep.to(prefix.dtype)) * MASKED
        for block in self.prefix_blocks:
            prefix = block(prefix, bias)
        return prefix, bias

    def velocity(
        self, x: torch.Tensor, t: float, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor
    ) -> torch.Tensor:
        h = self.action_in(x) + self.action_position
        h = h + self.time_mlp(time_embedding(t, self.width, h))
        for block, kv in zip(self.expert_blocks, prefix_kv, strict=True):
            h = block(h, None, kv, bias)
        return self.action_out(h)

    def forward(
        self, images: torch.Tensor, image_masks: torch.Tensor, state: torch.Tensor,
        tokens: torch.Tensor, token_mask: torch.Tensor, noise: torch.Tensor,
    ) -> torch.Tensor:
        prefix, bias = self.encode_prefix(images, image_masks, state, tokens, token_mask)
        # Like pi0's KV cache: the prefix is attended to by every step but projected only once.
        prefix_kv = [block.cross.keys_values(prefix) for block in self.expert_blocks]
        x = noise
        dt = -1.0 / spec.NUM_FLOW_STEPS
        for step in range(spec.NUM_FLOW_STEPS):
            t = 1.0 + step * dt
            x = x + dt * self.velocity(x, t, prefix_kv, bias)
        return x


def build_reference_policy(seed: int = 0) -> ReferencePolicy:
    """The reference policy with seeded weights: the same seed gives the same network."""
    torch.manual_seed(seed)
    return ReferencePolicy().eval()
