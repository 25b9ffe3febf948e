"""Per-format preprocess, configured by JSON, on whole batches.

`Preprocessor` turns a batch of OpenPI observations (already as named arrays) into the policy core's
tensors (`spec.CORE_INPUTS`). It keeps only what is specific to a model and a dataset and is not
tensor math: which observation goes to which camera slot (resized with pad when a camera is not at
the model's size), the state's layout, tokens (cached per prompt), noise from the seed, and the norm
stats as tables the core applies. The Triton python model wraps it (see `triton_python.py`); the
in-process reference pipeline (`reference_pipeline.py`) calls the very same object.

The JSON is the `preprocess` parameter of the model's `config.pbtxt`:

    {"cameras": [{"input": "image", "layout": "HWC"}, {"input": "wrist_image"}, null],
     "state_inputs": ["state"], "norm_stats": "../libero/norm_stats.json", "norm_mode": "quantile",
     "prompt_input": "prompt", "default_prompt": "", "tokenizer": "bytes", "seed_input": "seed",
     "prompt_cache": 1024}

Paths are relative to the model's directory. A `null` camera slot is always absent (mask False). A
camera's `layout` is HWC (default), CHW, or THWC: a history of frames (GR00T video [T, H, W, 3]), of
which the newest fills the slot. State inputs with a history axis are flattened.
`norm_stats` must hold `state` (as wide as the state inputs together) and `actions` (as wide as the
robot's actions: the ensemble's `output_map` slice).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openpi_policy import spec
from openpi_policy.tokenizer import PromptCache, load_tokenizer
from openpi_policy.transforms import (
    NormMode,
    NormStats,
    camera_into,
    flow_noise,
    load_norm_stats,
    norm_table,
    pad_last_dim,
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
    prompt_cache: int = 1024  # prompts whose tokens are kept (least recently used dropped first)
    base_dir: Path = field(default=Path("."))

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], base_dir: Path) -> PreprocessConfig:
        raw = json.loads(text) if isinstance(text, str) else dict(text)
        cameras = tuple(Camera(**slot) if slot else None for slot in raw.pop("cameras"))
        if len(cameras) != spec.NUM_CAMERAS:
            raise ValueError(f"'cameras' needs {spec.NUM_CAMERAS} slots (null for unused), got {len(cameras)}")
        for camera in cameras:
            if camera is not None and camera.layout not in ("HWC", "CHW", "THWC"):
                raise ValueError(f"camera {camera.input!r}: layout must be 'HWC', 'CHW' or 'THWC' (a history of "
                                 "frames, the newest of which is used)")
        return cls(
            cameras=cameras,
            state_inputs=tuple(raw.pop("state_inputs")),
            norm_stats=base_dir / raw.pop("norm_stats"),
            base_dir=base_dir,
            **raw,
        )


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
        self.action_stats = _stats(config.norm_stats, "actions")
        if self.action_stats.dim > spec.ACTION_DIM:
            raise ValueError(f"{config.norm_stats}: 'actions' has {self.action_stats.dim} dims, "
                             f"the policy core {spec.ACTION_DIM}")
        # The same for every request of this format: computed once, sent with each request (256 bytes).
        self.state_norm = norm_table(self.state_stats, config.norm_mode, spec.STATE_DIM)
        self.action_norm = norm_table(self.action_stats, config.norm_mode, spec.ACTION_DIM)
        self.prompts = PromptCache(load_tokenizer(config.tokenizer, config.base_dir), spec.MAX_TOKEN_LEN,
                                   config.prompt_cache)

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
        images = np.zeros((total, spec.NUM_CAMERAS, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), np.uint8)
        masks = np.zeros((total, spec.NUM_CAMERAS), bool)
        for slot, camera in enumerate(self.config.cameras):
            if camera is None:
                continue
            start = 0
            for request, size in zip(requests, sizes, strict=True):
                # Request by request, straight into the batch: no concatenated copy, and requests whose
                # frames differ in size (or lack this camera) need no special case.
                window = slice(start, start + size)
                masks[window, slot] = camera_into(images[window, slot], request[camera.input], camera.layout)
                start += size

        # A state input with a history axis (GR00T's [T, D]) is flattened, oldest step first.
        state = np.concatenate(
            [_concat([r[name] for r in requests]).reshape(total, -1) for name in self.config.state_inputs], axis=-1
        ).astype(np.float32, copy=False)
        if state.shape[-1] != self.state_stats.dim:
            raise ValueError(f"state has {state.shape[-1]} dims but the norm stats have {self.state_stats.dim}")

        tokens, token_mask = self.prompts(self._prompts(requests, total))
        seeds = _concat([r[self.config.seed_input] for r in requests])
        return {
            "images": images,
            "image_masks": masks,
            "state": np.ascontiguousarray(pad_last_dim(state, spec.STATE_DIM)),
            "state_norm": np.repeat(self.state_norm[None], total, axis=0),
            "tokens": tokens,
            "token_mask": token_mask,
            "noise": flow_noise(seeds, spec.ACTION_HORIZON, spec.ACTION_DIM),
            "action_norm": np.repeat(self.action_norm[None], total, axis=0),
        }

    def _prompts(self, requests: Sequence[Batch], total: int) -> list[str]:
        name = self.config.prompt_input
        if not name:
            return [self.config.default_prompt] * total
        prompts = []
        for value in _concat([r[name] for r in requests]).reshape(total, -1)[:, 0]:
            text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
            prompts.append(text if text.strip() else self.config.default_prompt)
        return prompts
