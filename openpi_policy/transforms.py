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

from openpi_policy.spec import IMAGE_SIZE, NORM_ROWS

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


Layout = Literal["HWC", "CHW", "THWC"]


def camera_into(out: np.ndarray, frames: np.ndarray, layout: Layout = "HWC") -> np.ndarray:
    """Write a batch of uint8 camera frames into `out` (uint8 [B, size, size, 3], the core's HWC layout)
    and return the per-item mask.

    `frames` is [B, H, W, 3] (or [B, 3, H, W] for CHW cameras such as ALOHA's, or [B, T, H, W, 3] for a
    history of T frames as GR00T clients send video: the newest, last, one fills the slot). Frames already at
    the model's size, the usual case, are only copied (a CHW frame one channel at a time, which numpy
    does 7x faster than one strided transpose); the others are resized with pad. An empty frame (H or W
    of 0) means the camera is absent: `out` keeps its zeros and the mask is False, and the policy never
    attends to it.
    """
    if layout == "THWC":
        frames, layout = frames[:, -1], "HWC"
    batch, size = out.shape[0], out.shape[1]
    height, width = (frames.shape[2:4] if layout == "CHW" else frames.shape[1:3])
    if height == 0 or width == 0:
        return np.zeros(batch, bool)
    if (height, width) == (size, size):
        if layout == "CHW":
            for channel in range(3):
                out[..., channel] = frames[:, channel]
        else:
            out[...] = frames
    else:
        hwc = np.moveaxis(frames, -3, -1) if layout == "CHW" else frames
        for item, frame in enumerate(hwc):
            out[item] = resize_with_pad(frame, size, size)
    return np.ones(batch, bool)


def prepare_images(
    images: np.ndarray, layout: Layout = "HWC", size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """One camera's batch of frames -> (uint8 [B, size, size, 3], bool mask [B]); see `camera_into`."""
    out = np.zeros((images.shape[0], size, size, 3), np.uint8)
    return out, camera_into(out, images, layout)


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


def norm_table(stats: NormStats, mode: NormMode, width: int) -> np.ndarray:
    """The core's norm input for these stats: float32 [2, width], rows `spec.NORM_ROWS` (center, scale).

    normalised = (x - center) / scale is openpi's z-score `(x - mean) / (std + eps)` (center = mean,
    scale = std + eps) and its quantile `(x - q01) / (q99 - q01 + eps) * 2 - 1` (center = the
    midpoint, scale = half the range). Subtracting the center before scaling keeps float32 precision
    where |mean| is large against std. Dimensions past the stats' (padding) get center 0, scale 1.
    """
    if width < stats.dim:
        raise ValueError(f"norm stats have {stats.dim} dims, more than the model's {width}")
    if mode == "zscore":
        center, scale = stats.mean, stats.std + np.float32(NORM_EPS)
    elif mode == "quantile":
        half = (stats.q99.astype(np.float64) - stats.q01 + NORM_EPS) / 2.0
        center, scale = stats.q01 + half, half
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}: use 'zscore' or 'quantile'")
    table = np.zeros((len(NORM_ROWS), width), np.float32)
    table[NORM_ROWS.index("scale")] = 1.0
    table[NORM_ROWS.index("center"), : stats.dim] = center
    table[NORM_ROWS.index("scale"), : stats.dim] = scale
    return table


def pad_last_dim(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad (never truncate) the last axis to `dim`, as openpi pads state/actions to the model's width."""
    have = x.shape[-1]
    if have > dim:
        raise ValueError(f"cannot pad {have} dims down to {dim}")
    if have == dim:
        return x
    out = np.zeros((*x.shape[:-1], dim), x.dtype)  # np.pad: 16 µs per call here; this: 1 µs
    out[..., :have] = x
    return out


# --- noise ----------------------------------------------------------------------------------


def flow_noise(seeds: np.ndarray, horizon: int, action_dim: int) -> np.ndarray:
    """Standard-normal flow-matching noise, one [horizon, action_dim] draw per seed (PCG64)."""
    return np.stack(
        [
            np.random.default_rng(int(seed)).standard_normal((horizon, action_dim), dtype=np.float32)
            for seed in np.asarray(seeds).reshape(-1)
        ]
    )
