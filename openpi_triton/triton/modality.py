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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openpi_triton.triton.policy import Policy

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


def modality_from_parameter(raw: Any, policy: Policy) -> ModalityConfig:
    """Parse the parameter and check it against `policy`; ValueError says what does not fit."""
    if not isinstance(raw, dict) or set(raw) != set(MODALITIES):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"must be a JSON object with exactly {list(MODALITIES)}, got {got}")
    config = ModalityConfig(**{name: _modality(name, raw[name]) for name in MODALITIES})
    if len(config.language.keys) != 1:
        raise ValueError(f"needs exactly one language key (as GR00T policies take), got {list(config.language.keys)}")
    inputs = {spec.key: spec for spec in policy.inputs}
    sent = set()
    for name, rank, what in (("video", 4, "[T, H, W, 3]"), ("state", 2, "[T, D]")):
        modality = config.modality(name)
        for key in modality.keys:
            flat = observation_key(name, key)
            spec = inputs.get(flat)
            if spec is None or spec.datatype == "BYTES":
                raise ValueError(f"{name} key {key!r}: the policy has no numeric observation {flat!r}")
            if len(spec.dims) != rank or spec.dims[0] not in (-1, modality.history):
                raise ValueError(f"{name} key {key!r}: observation {flat!r} has dims {list(spec.dims)}, GR00T "
                                 f"sends {what} with T = {modality.history} (len of delta_indices)")
            sent.add(flat)
    language = inputs.get(config.language_key)
    if language is None or language.datatype != "BYTES":
        raise ValueError(f"language key {config.language_key!r} is not a string observation of the policy")
    sent.add(config.language_key)
    unsent = [key for key in policy.required_keys if key not in sent]
    if unsent:
        raise ValueError(f"the policy needs observations {unsent} that no modality key provides")
    for key in config.action.keys:
        flat = observation_key("action", key)
        if flat not in policy.outputs:
            raise ValueError(f"action key {key!r}: 'output_map' has no {flat!r}")
        horizon = policy.slices.get(flat, (None,))[0]
        if horizon != config.action.history:
            raise ValueError(f"action key {key!r}: {flat!r} needs a slice whose horizon is {config.action.history} "
                             f"(len of action delta_indices), got {list(policy.slices.get(flat, ())) or 'none'}")
    return config
