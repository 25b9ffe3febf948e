"""A policy's GR00T modality config: what a GR00T client is told it must send and gets back, read from the
ensemble's `gr00t_modality_config` parameter (JSON, in GR00T N1.6's form: bare keys) and checked against the
policy's own inputs and outputs, so that the mapping lives in the model repository.

    {"video":    {"delta_indices": [0], "modality_keys": ["front", "wrist"]},
     "state":    {"delta_indices": [0], "modality_keys": ["single_arm", "gripper"]},
     "action":   {"delta_indices": [0, 1, ..., 15], "modality_keys": ["single_arm", "gripper"],
                  "action_configs": [...]},
     "language": {"delta_indices": [0], "modality_keys": ["annotation.human.task_description"]}}

The policy's observation keys are GR00T's flat keys (what N1.5 clients send and an OpenPI client sends
too): `video.<key>` uint8 [T, H, W, 3] and `state.<key>` [T, D], with T = len(delta_indices) of that
modality, and the language key as it is (a string). Its response keys are `action.<key>` [H, D] with
H = len(delta_indices) of the actions, usually cuts of the core's actions (`output_map` slice and offset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("video", "state", "action", "language")
# Fields N1.6 clients read besides the two every generation has; passed on as the repository gives them.
EXTRA_FIELDS = ("sin_cos_embedding_keys", "mean_std_embedding_keys", "action_configs")


@dataclass(frozen=True)
class Modality:
    delta_indices: tuple[int, ...]
    keys: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> int:
        """T: how many steps of this modality one observation (or action chunk) holds."""
        return len(self.delta_indices)


@dataclass(frozen=True)
class ModalityConfig:
    video: Modality
    state: Modality
    action: Modality
    language: Modality

    @property
    def language_key(self) -> str:
        return self.language.keys[0]

    def modality(self, name: str) -> Modality:
        return getattr(self, name)


def observation_key(modality: str, key: str) -> str:
    """The flat (N1.5, and policy observation) key of a modality key: `video.front`; language keys as they are."""
    return key if modality == "language" else f"{modality}.{key}"


def _modality(name: str, raw: Any) -> Modality:
    if not isinstance(raw, dict):
        raise ValueError(f"'{name}' must be a JSON object with delta_indices and modality_keys")
    unknown = set(raw) - {"delta_indices", "modality_keys", *EXTRA_FIELDS}
    if unknown:
        raise ValueError(f"'{name}' has unknown fields {sorted(unknown)}")
    deltas, keys = raw.get("delta_indices"), raw.get("modality_keys")
    if not isinstance(deltas, list) or not deltas or not all(isinstance(d, int) and not isinstance(d, bool)
                                                             for d in deltas):
        raise ValueError(f"'{name}' delta_indices must be a non-empty list of integers, got {deltas!r}")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"'{name}' modality_keys must be a non-empty list of names, got {keys!r}")
    return Modality(tuple(deltas), tuple(keys), {k: raw[k] for k in EXTRA_FIELDS if k in raw})


def parse_modality_config(raw: Any) -> ModalityConfig:
    """Parse the parameter on its own (`policy.policy_from_config` checks it against the policy's inputs
    and outputs); ValueError says what is wrong."""
    if not isinstance(raw, dict) or set(raw) != set(MODALITIES):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"must be a JSON object with exactly {list(MODALITIES)}, got {got}")
    config = ModalityConfig(**{name: _modality(name, raw[name]) for name in MODALITIES})
    if len(config.language.keys) != 1:
        raise ValueError(f"needs exactly one language key (as GR00T policies take), got {list(config.language.keys)}")
    return config
