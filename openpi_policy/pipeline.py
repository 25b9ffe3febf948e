"""Per-format preprocess and postprocess, configured by JSON, on whole batches.

`Preprocessor` turns a batch of OpenPI observations (already as named arrays) into the policy
core's tensors; `Postprocessor` turns the core's action chunks back into the robot's actions.
The Triton python models wrap these (see `triton_python.py`); the in-process reference pipeline
(`reference_pipeline.py`) calls the very same objects, so both paths share one implementation.

The JSON is the `preprocess` / `postprocess` parameter of the model's `config.pbtxt`:

    preprocess:  {"cameras": [{"input": "image", "layout": "HWC"}, {"input": "wrist_image"}, null],
                  "state_inputs": ["state"], "norm_stats": "../libero/norm_stats.json",
                  "norm_mode": "quantile", "prompt_input": "prompt", "default_prompt": "",
                  "tokenizer": "bytes", "seed_input": "seed"}
    postprocess: {"norm_stats": "../libero/norm_stats.json", "norm_mode": "quantile",
                  "action_horizon": 10, "action_dim": 7}

Paths are relative to the model's directory. A `null` camera slot is always absent (mask False).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openpi_policy import spec
from openpi_policy.tokenizer import load_tokenizer, tokenize_prompts
from openpi_policy.transforms import (
    NormMode,
    NormStats,
    flow_noise,
    load_norm_stats,
    normalize,
    pad_last_dim,
    prepare_images,
    unnormalize,
)

Batch = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Camera:
    input: str
    layout: str = "HWC"


@dataclass(frozen=True)
class PreprocessConfig:
    cameras: tuple[Camera | None, ...]
    state_inputs: tuple[str, ...]
    norm_stats: Path
    norm_mode: NormMode = "quantile"
    prompt_input: str | None = "prompt"
    default_prompt: str = ""
    tokenizer: str = "bytes"
    seed_input: str = "seed"
    base_dir: Path = field(default=Path("."))

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], base_dir: Path) -> PreprocessConfig:
        raw = json.loads(text) if isinstance(text, str) else dict(text)
        cameras = tuple(Camera(**slot) if slot else None for slot in raw.pop("cameras"))
        if len(cameras) != spec.NUM_CAMERAS:
            raise ValueError(f"'cameras' needs {spec.NUM_CAMERAS} slots (null for unused), got {len(cameras)}")
        for camera in cameras:
            if camera is not None and camera.layout not in ("HWC", "CHW"):
                raise ValueError(f"camera {camera.input!r}: layout must be 'HWC' or 'CHW'")
        return cls(
            cameras=cameras,
            state_inputs=tuple(raw.pop("state_inputs")),
            norm_stats=base_dir / raw.pop("norm_stats"),
            base_dir=base_dir,
            **raw,
        )


@dataclass(frozen=True)
class PostprocessConfig:
    norm_stats: Path
    action_horizon: int
    action_dim: int
    norm_mode: NormMode = "quantile"

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], base_dir: Path) -> PostprocessConfig:
        raw = json.loads(text) if isinstance(text, str) else dict(text)
        return cls(norm_stats=base_dir / raw.pop("norm_stats"), **raw)


def model_parameter(model_config: Mapping[str, Any], key: str) -> str:
    """A string parameter of a model config in Triton's JSON form (what `initialize` receives)."""
    try:
        return model_config["parameters"][key]["string_value"]
    except KeyError:
        raise ValueError(f"model {model_config.get('name')!r}: config.pbtxt has no parameter '{key}'") from None


def _stats(path: Path, key: str) -> NormStats:
    table = load_norm_stats(path)
    if key not in table:
        raise ValueError(f"{path}: no '{key}' entry (has {sorted(table)})")
    return table[key]


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class Preprocessor:
    """OpenPI observation batch -> policy-core inputs (`spec.CORE_INPUTS`)."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self.state_stats = _stats(config.norm_stats, "state")
        self.tokenizer = load_tokenizer(config.tokenizer, config.base_dir)

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], model_dir: Path) -> Preprocessor:
        """From the `preprocess` parameter of a model config; paths are relative to `model_dir`."""
        return cls(PreprocessConfig.from_json(model_parameter(model_config, "preprocess"), model_dir))

    @property
    def input_names(self) -> list[str]:
        names = [camera.input for camera in self.config.cameras if camera is not None]
        names += list(self.config.state_inputs)
        if self.config.prompt_input:
            names.append(self.config.prompt_input)
        return [*names, self.config.seed_input]

    def __call__(self, requests: Sequence[Batch]) -> dict[str, np.ndarray]:
        """Process several requests (each with its own leading batch axis) as one batch."""
        sizes = [len(request[self.config.seed_input]) for request in requests]
        total = sum(sizes)
        images = np.zeros((total, spec.NUM_CAMERAS, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE), np.float32)
        masks = np.zeros((total, spec.NUM_CAMERAS), bool)
        for slot, camera in enumerate(self.config.cameras):
            if camera is not None:
                images[:, slot], masks[:, slot] = self._camera(requests, camera)

        state = np.concatenate(
            [_concat([r[name] for r in requests]) for name in self.config.state_inputs], axis=-1
        ).astype(np.float32)
        if state.shape[-1] != self.state_stats.dim:
            raise ValueError(f"state has {state.shape[-1]} dims but the norm stats have {self.state_stats.dim}")
        state = pad_last_dim(normalize(state, self.state_stats, self.config.norm_mode), spec.STATE_DIM)

        tokens, token_mask = tokenize_prompts(self._prompts(requests, total), self.tokenizer, spec.MAX_TOKEN_LEN)
        seeds = _concat([r[self.config.seed_input] for r in requests])
        return {
            "images": images,
            "image_masks": masks,
            "state": np.ascontiguousarray(state, np.float32),
            "tokens": tokens,
            "token_mask": token_mask,
            "noise": flow_noise(seeds, spec.ACTION_HORIZON, spec.ACTION_DIM),
        }

    def _camera(self, requests: Sequence[Batch], camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        frames = [r[camera.input] for r in requests]
        if len({frame.shape for frame in frames}) == 1:
            return prepare_images(_concat(frames), camera.layout)
        # Requests with different frame sizes (or an absent camera in some) are prepared apart.
        prepared = [prepare_images(frame, camera.layout) for frame in frames]
        return _concat([p[0] for p in prepared]), _concat([p[1] for p in prepared])

    def _prompts(self, requests: Sequence[Batch], total: int) -> list[str]:
        name = self.config.prompt_input
        if not name:
            return [self.config.default_prompt] * total
        prompts = []
        for value in _concat([r[name] for r in requests]).reshape(total, -1)[:, 0]:
            text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
            prompts.append(text if text.strip() else self.config.default_prompt)
        return prompts


class Postprocessor:
    """Policy-core action chunks [B, 50, 32] -> the robot's actions [B, horizon, dim], un-normalised."""

    def __init__(self, config: PostprocessConfig) -> None:
        self.config = config
        self.action_stats = _stats(config.norm_stats, "actions")
        if self.action_stats.dim != config.action_dim:
            raise ValueError(
                f"action_dim is {config.action_dim} but the 'actions' norm stats have {self.action_stats.dim} dims"
            )
        if not 0 < config.action_horizon <= spec.ACTION_HORIZON:
            raise ValueError(f"action_horizon must be in 1..{spec.ACTION_HORIZON}, got {config.action_horizon}")

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], model_dir: Path) -> Postprocessor:
        """From the `postprocess` parameter of a model config; paths are relative to `model_dir`."""
        return cls(PostprocessConfig.from_json(model_parameter(model_config, "postprocess"), model_dir))

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        sliced = actions[:, : self.config.action_horizon, : self.config.action_dim]
        return np.ascontiguousarray(unnormalize(sliced, self.action_stats, self.config.norm_mode), np.float32)
