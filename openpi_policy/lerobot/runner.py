"""One LeRobot policy answering whole batches: preprocessor -> `predict_action_chunk` (with the noise of each
row's seed) -> postprocessor. What the python model runs on each Triton batch, and what anyone can run
in-process to reproduce an answer (`LeRobotRunner.reference`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from openpi_policy.lerobot.batch import assemble, noise_batch
from openpi_policy.lerobot.checkpoint import inspect_checkpoint
from openpi_policy.lerobot.loading import LoadedPolicy, load_checkpoint
from openpi_policy.lerobot.rtc import (
    DELAY,
    LEFTOVER,
    LENGTH,
    RowGuidance,
    action_normaliser,
    check_rows,
    enable_rtc,
    row_guidance,
)


class LeRobotRunner:
    def __init__(self, loaded: LoadedPolicy, plan: Mapping[str, Sequence[str]] | None = None) -> None:
        self.loaded = loaded
        config = loaded.info.config
        # Without a key map, each feature comes from the input of its own name.
        self.plan = dict(plan) if plan is not None else default_plan(config)
        self.chunk_size = int(config.chunk_size)
        self.max_action_dim = int(config.max_action_dim)
        # RTC on: batches without RTC rows are sampled exactly as before (see rtc.BatchedRTCProcessor).
        enable_rtc(loaded.policy)
        self.normaliser = action_normaliser(loaded.preprocessor)

    @classmethod
    def from_checkpoint(cls, source: str, device: str | None = None, tokenizer: str | None = None,
                        plugins: tuple[str, ...] = (), plan: Mapping[str, Sequence[str]] | None = None
                        ) -> LeRobotRunner:
        return cls(load_checkpoint(inspect_checkpoint(source, tokenizer, plugins), device), plan)

    @property
    def description(self) -> str:
        info, params = self.loaded.info, sum(p.numel() for p in self.loaded.policy.parameters())
        dtype = next(self.loaded.policy.parameters()).dtype
        return (f"{info.policy_type} from {info.source} on {self.loaded.device} ({params / 1e6:.1f}M parameters, "
                f"{str(dtype).removeprefix('torch.')})")

    def __call__(self, inputs: Mapping[str, np.ndarray], seeds: Sequence[int]) -> np.ndarray:
        """Stacked model inputs of B rows and their seeds -> actions float32 [B, chunk_size, action_dim].
        With the RTC inputs (`rtc.RTC_INPUTS`), rows of non-zero leftover length are guided by RTC."""
        rtc = None
        if LENGTH in inputs:
            rtc = (inputs[LEFTOVER], inputs[LENGTH].reshape(-1).tolist(), inputs[DELAY].reshape(-1).tolist())
        return self.run_batch(assemble(self.plan, inputs), seeds, rtc)

    def guidance(self, leftovers: np.ndarray, lengths: Sequence[int], delays: Sequence[int]) -> RowGuidance | None:
        """Per-row RTC inputs (leftovers in the robot's units [B, T, action_dim], 0 = no RTC) -> guidance."""
        check_rows(lengths, delays, self.chunk_size)
        return row_guidance(leftovers, lengths, delays, self.normaliser, self.loaded.device)

    def run_batch(self, batch: dict[str, Any], seeds: Sequence[int],
                  rtc: tuple[np.ndarray, Sequence[int], Sequence[int]] | None = None) -> np.ndarray:
        """A robot batch as LeRobot's preprocessor takes it (features by name, images float CHW in [0, 1]);
        `rtc`: (leftovers, lengths, delays) per row, see `guidance`."""
        import torch

        loaded = self.loaded
        guidance = None if rtc is None else self.guidance(*rtc)
        # RTC's guidance runs autograd (LeRobot's denoise_step), which inference mode forbids.
        context = torch.inference_mode() if guidance is None else torch.no_grad()
        with context:
            model_batch = loaded.preprocessor(batch)
            noise = noise_batch(seeds, self.chunk_size, self.max_action_dim, loaded.device)
            kwargs = {} if guidance is None else {"prev_chunk_left_over": guidance, "inference_delay": None}
            actions = loaded.policy.predict_action_chunk(model_batch, noise=noise, **kwargs)
            actions = loaded.postprocessor(actions)
        return actions.to(torch.float32).cpu().numpy()

    reference = run_batch  # the in-process answer a served one is compared with


def default_plan(config: Any) -> dict[str, list[str]]:
    """Feature -> the model input of the same name: the checkpoint's features and `task`."""
    names = [name for name in config.input_features if _fed_by_robot(config, name)]
    return {**{name: [name] for name in names}, "task": ["task"]}


def _fed_by_robot(config: Any, name: str) -> bool:
    # pi0/pi0.5 add `observation.images.empty_camera_<i>` features that the policy fills itself.
    return ".empty_camera_" not in name and config.input_features[name].type.value in ("VISUAL", "STATE")
