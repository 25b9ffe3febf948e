"""Which served policy a LeRobot client gets, and how its robot's raw dict becomes that policy's observation.

SendPolicyInstructions names a checkpoint (`policy_type`, `pretrained_name_or_path`); nothing it names is ever
loaded. It selects one of the policies this server serves from a LeRobot checkpoint (their metadata's `lerobot`
block): by the name the policy is served under, or by the path it was loaded from together with its type.

The robot's raw observation (`<joint>.pos` numbers, each camera an HWC uint8 array, `task`) maps to the
checkpoint's features as LeRobot's own server maps it (`build_dataset_frame` with the client's
`lerobot_features`, then the `rename_map`): `observation.state` is the float32 vector of the state feature's
`names` in that order, `observation.images.<cam>` is the raw value under `<cam>`. The cameras stay at the
robot's size (the served policy resizes them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from openpi_triton.front.lerobot.unpickle import PolicyInstructions
from openpi_triton.triton.policy import Policy

OBS_PREFIX = "observation"
STATE_KEY = "observation.state"
IMAGES_PREFIX = "observation.images."
TASK_KEY = "task"
SEED_KEY = "seed"  # optional int in the raw observation: reproducible noise (tests, replays)


class FeatureError(ValueError):
    """Instructions or an observation that do not fit the served policy; the text says what and where."""


def lerobot_block(policy: Policy) -> dict[str, Any] | None:
    block = policy.metadata.get("lerobot")
    return block if isinstance(block, dict) else None


def describe_served(policies: Mapping[str, Policy]) -> str:
    served = [f"{name!r} ({block.get('policy_type')}, from {block.get('pretrained_name_or_path')!r})"
              for name, policy in sorted(policies.items()) if (block := lerobot_block(policy)) is not None]
    if not served:
        return "this server serves no LeRobot checkpoint (start it with --lerobot-policy NAME=PATH)"
    return "served: " + ", ".join(served)


def _same_path(a: str, b: str) -> bool:
    return a == b or (bool(a) and bool(b) and os.path.normpath(a) == os.path.normpath(b))


def select_policy(instructions: PolicyInstructions, policies: Mapping[str, Policy]) -> Policy:
    """The served policy these instructions name, or FeatureError listing what is served."""
    wanted, kind = instructions.pretrained_name_or_path, instructions.policy_type
    named = policies.get(wanted)
    if named is not None and lerobot_block(named) is not None:
        served_type = lerobot_block(named).get("policy_type")
        if served_type != kind:
            raise FeatureError(f"policy {wanted!r} is a {served_type} checkpoint, not {kind!r}; "
                               f"{describe_served(policies)}")
        return named
    for policy in policies.values():
        block = lerobot_block(policy)
        if block is not None and block.get("policy_type") == kind and _same_path(
                str(block.get("pretrained_name_or_path", "")), wanted):
            return policy
    raise FeatureError(f"this server does not serve {kind!r} checkpoint {wanted!r} (it never loads what a client "
                       f"names; ask for a served policy by its name or by the path it was served from); "
                       f"{describe_served(policies)}")


@dataclass(frozen=True)
class Binding:
    """A client's robot bound to a served policy: where each of the policy's keys comes from in the raw dict."""

    policy: Policy
    actions_per_chunk: int
    state_names: tuple[str, ...]   # raw keys of the state vector, in order ('' entries: no state)
    state_key: str | None          # the policy's key for the state vector (after rename_map)
    cameras: dict[str, str]        # the policy's image key -> the raw camera key
    state_to_policy: bool = True   # the policy takes the state (else it only feeds the similarity filter)

    def state(self, raw: Mapping[str, Any]) -> np.ndarray | None:
        """The joint-state vector of a raw observation (what the similarity filter compares), or FeatureError."""
        if self.state_key is None:
            return None
        values = []
        for name in self.state_names:
            if name not in raw:
                raise FeatureError(f"the observation has no {name!r}, which the robot's lerobot_features name "
                                   f"in {STATE_KEY!r}")
            value = raw[name]
            if isinstance(value, np.ndarray) and value.size == 1:
                value = value.reshape(-1)[0]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise FeatureError(f"observation {name!r} must be a number, got {type(value).__name__}")
            values.append(value)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(values, dtype=np.float32)

    def observation(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The policy's observation from a raw robot dict, or FeatureError naming the key."""
        mapped: dict[str, Any] = {}
        state = self.state(raw)
        if state is not None and self.state_key is not None and self.state_to_policy:
            mapped[self.state_key] = state
        for key, camera in self.cameras.items():
            if camera not in raw:
                raise FeatureError(f"the observation has no camera {camera!r}, which the robot's lerobot_features "
                                   f"declare (policy key {key!r})")
            image = raw[camera]
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
                shape = list(image.shape) if isinstance(image, np.ndarray) else type(image).__name__
                raise FeatureError(f"camera {camera!r} must be an (H, W, 3) uint8 image, got {shape}")
            mapped[key] = image
        task = raw.get(TASK_KEY, "")
        if not isinstance(task, str):
            raise FeatureError(f"observation {TASK_KEY!r} must be a string, got {type(task).__name__}")
        mapped[TASK_KEY] = task
        return mapped

    @staticmethod
    def seed(raw: Mapping[str, Any]) -> int | None:
        seed = raw.get(SEED_KEY)
        if seed is None:
            return None
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise FeatureError(f"observation {SEED_KEY!r} must be a non-negative integer below 2**63")
        return int(seed)


def _shape(feature: Mapping[str, Any]) -> tuple[int, ...] | None:
    shape = feature.get("shape")
    if isinstance(shape, (list, tuple)) and all(isinstance(n, int) for n in shape):
        return tuple(shape)
    return None


def bind(instructions: PolicyInstructions, policy: Policy) -> Binding:
    """Check the robot's features (after the rename map) against the served policy's and bind them."""
    rename = instructions.rename_map
    state_names: tuple[str, ...] = ()
    state_key = None
    cameras: dict[str, str] = {}
    for key, feature in instructions.lerobot_features.items():
        target = rename.get(key, key)
        if key == STATE_KEY or (feature.get("dtype") == "float32" and key.startswith(OBS_PREFIX)
                                and len(_shape(feature) or ()) == 1 and not key.startswith(IMAGES_PREFIX)):
            names = feature.get("names")
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise FeatureError(f"lerobot_features[{key!r}] must list its joint names")
            state_names, state_key = tuple(names), target
        elif key.startswith(IMAGES_PREFIX) and feature.get("dtype") in ("image", "video"):
            cameras[target] = key.removeprefix(IMAGES_PREFIX)
    block = lerobot_block(policy) or {}
    wanted = block.get("input_features") if isinstance(block.get("input_features"), dict) else {}
    sent = {state_key, *cameras} - {None}
    described = f"the robot sends {sorted(sent)}" + (f" (after rename_map {rename})" if rename else "")
    for key, feature in wanted.items():
        kind = str(feature.get("type", "")).upper() if isinstance(feature, dict) else ""
        if kind not in ("STATE", "VISUAL"):
            continue
        if key not in sent:
            raise FeatureError(f"policy {policy.name!r} needs {key!r}, which the robot's lerobot_features do not "
                               f"provide; {described}. Map a camera or state to it with rename_map")
        if kind == "STATE" and key == state_key:
            expected = _shape(feature)
            if expected is not None and expected != (len(state_names),):
                raise FeatureError(f"policy {policy.name!r} takes {key!r} of shape {list(expected)}, the robot sends "
                                   f"{len(state_names)} joints {list(state_names)}")
    inputs = {spec.key for spec in policy.inputs if not spec.optional} - {TASK_KEY}
    missing = sorted(inputs - sent)
    if missing:
        raise FeatureError(f"policy {policy.name!r} needs {missing}; {described}")
    known = {spec.key for spec in policy.inputs}
    return Binding(policy=policy, actions_per_chunk=instructions.actions_per_chunk, state_names=state_names,
                   state_key=state_key, state_to_policy=state_key in known,
                   cameras={key: camera for key, camera in cameras.items() if key in known})
