"""The policy-side transforms, shared by the Triton python models and the in-process reference.

Everything here works on a batch (leading axis) and needs only NumPy and Pillow, so the
same module runs inside Triton's python backend (Python 3.10 in the 24.10 container) and
in the test suite (Python 3.11). The formulas follow openpi's `transforms.py` and
`openpi_client.image_tools`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from openpi_policy.spec import IMAGE_SIZE

NORM_EPS = 1e-6

NormMode = Literal["zscore", "quantile"]


# --- images -------------------------------------------------------------------------------


def resize_with_pad(image: np.ndarray, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """Resize one HWC uint8 image to fit (height, width) without distortion, centred on black.

    Same geometry and filter as openpi's `resize_with_pad` (PIL bilinear, scale by the limiting side,
    integer truncation of the resized size and of the padding offsets). A no-op at the target size.
    """
    cur_height, cur_width = image.shape[:2]
    if (cur_height, cur_width) == (height, width):
        return image
    ratio = max(cur_width / width, cur_height / height)
    resized_height = int(cur_height / ratio)
    resized_width = int(cur_width / ratio)
    resized = np.asarray(
        Image.fromarray(image).resize((resized_width, resized_height), resample=Image.BILINEAR)
    )
    out = np.zeros((height, width, image.shape[2]), dtype=image.dtype)
    top = max(0, int((height - resized_height) / 2))
    left = max(0, int((width - resized_width) / 2))
    out[top : top + resized_height, left : left + resized_width] = resized
    return out


def prepare_images(
    images: np.ndarray, layout: Literal["HWC", "CHW"] = "HWC", size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a batch of uint8 camera frames into the policy's float CHW input and a per-item mask.

    `images` is [B, H, W, 3] (or [B, 3, H, W] for CHW cameras such as ALOHA's). An empty frame
    (H or W of 0) means the camera is absent: it becomes a zero image with mask False.
    Returns (float32 [B, 3, size, size] in [-1, 1], bool [B]).
    """
    if layout == "CHW":
        images = np.moveaxis(images, -3, -1)
    batch, height, width = images.shape[:3]
    if height == 0 or width == 0:
        return np.zeros((batch, 3, size, size), np.float32), np.zeros(batch, bool)
    if (height, width) != (size, size):
        # PIL works one frame at a time; already-sized frames (the common case) skip this.
        images = np.stack([resize_with_pad(image, size, size) for image in images])
    scaled = images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)), np.ones(batch, bool)


# --- normalisation --------------------------------------------------------------------------


@dataclass(frozen=True)
class NormStats:
    """OpenPI's per-dimension statistics of one quantity (`state` or `actions`)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    @classmethod
    def from_json(cls, entry: Mapping[str, Sequence[float]]) -> NormStats:
        fields = {}
        for name in ("mean", "std", "q01", "q99"):
            if name not in entry:
                raise ValueError(f"norm stats entry is missing '{name}'")
            fields[name] = np.asarray(entry[name], dtype=np.float32).reshape(-1)
        dims = {name: value.shape[0] for name, value in fields.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"norm stats fields disagree in length: {dims}")
        return cls(**fields)


def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """Read an OpenPI `norm_stats.json`: {"norm_stats": {"state": {...}, "actions": {...}}}."""
    raw = json.loads(Path(path).read_text())
    table = raw.get("norm_stats", raw)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a map under 'norm_stats'")
    return {key: NormStats.from_json(value) for key, value in table.items()}


def normalize(x: np.ndarray, stats: NormStats, mode: NormMode) -> np.ndarray:
    """Normalise the last axis of `x` (the robot's own dims) with OpenPI's z-score or quantile formula."""
    x = x.astype(np.float32, copy=False)
    if mode == "zscore":
        return (x - stats.mean) / (stats.std + NORM_EPS)
    if mode == "quantile":
        return (x - stats.q01) / (stats.q99 - stats.q01 + NORM_EPS) * 2.0 - 1.0
    raise ValueError(f"unknown normalisation mode {mode!r}: use 'zscore' or 'quantile'")


def unnormalize(x: np.ndarray, stats: NormStats, mode: NormMode) -> np.ndarray:
    """The inverse of `normalize`."""
    x = x.astype(np.float32, copy=False)
    if mode == "zscore":
        return x * (stats.std + NORM_EPS) + stats.mean
    if mode == "quantile":
        return (x + 1.0) / 2.0 * (stats.q99 - stats.q01 + NORM_EPS) + stats.q01
    raise ValueError(f"unknown normalisation mode {mode!r}: use 'zscore' or 'quantile'")


def pad_last_dim(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad (never truncate) the last axis to `dim`, as openpi pads state/actions to the model's width."""
    have = x.shape[-1]
    if have > dim:
        raise ValueError(f"cannot pad {have} dims down to {dim}")
    if have == dim:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - have)]
    return np.pad(x, pad)


# --- noise ----------------------------------------------------------------------------------


def flow_noise(seeds: np.ndarray, horizon: int, action_dim: int) -> np.ndarray:
    """Standard-normal flow-matching noise, one [horizon, action_dim] draw per seed (PCG64)."""
    return np.stack(
        [
            np.random.default_rng(int(seed)).standard_normal((horizon, action_dim), dtype=np.float32)
            for seed in np.asarray(seeds).reshape(-1)
        ]
    )
