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


class LeRobotRunner:
    def __init__(self, loaded: LoadedPolicy, plan: Mapping[str, Sequence[str]] | None = None) -> None:
        self.loaded = loaded
        config = loaded.info.config
        # Without a key map, each feature comes from the input of its own name.
        self.plan = dict(plan) if plan is not None else default_plan(config)
        self.chunk_size = int(config.chunk_size)
        self.max_action_dim = int(config.max_action_dim)

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
        """Stacked model inputs of B rows and their seeds -> actions float32 [B, chunk_size, action_dim]."""
        return self.run_batch(assemble(self.plan, inputs), seeds)

    def run_batch(self, batch: dict[str, Any], seeds: Sequence[int]) -> np.ndarray:
        """A robot batch as LeRobot's preprocessor takes it (features by name, images float CHW in [0, 1])."""
        import torch

        loaded = self.loaded
        with torch.inference_mode():
            model_batch = loaded.preprocessor(batch)
            noise = noise_batch(seeds, self.chunk_size, self.max_action_dim, loaded.device)
            actions = loaded.policy.predict_action_chunk(model_batch, noise=noise)
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
