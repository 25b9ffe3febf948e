"""Which robot keys feed which feature of a LeRobot checkpoint, and which response keys get which actions: a
key map, checked against the checkpoint's features when the server starts.

Without one, robots send the checkpoint's own feature names (`observation.state`, `observation.images.<cam>`
as uint8 HWC, `task`) and get `actions` [chunk_size, action_dim]. A key map is a preset (`droid`, `libero`,
`aloha`: OpenPI clients' keys; `gr00t`: a GR00T N1.6 client's) or a JSON file of the same form:

    {"observation": {"observation/exterior_image_1_left": "observation.images.front",
                     "observation/joint_position": {"feature": "observation.state", "dims": [7]},
                     "observation/gripper_position": {"feature": "observation.state", "dims": [1]},
                     "prompt": "task"},
     "actions": {"actions": {}},                 # or cuts: {"action.arm": {"slice": [50, 5]}, ...}
     "gr00t_modality_config": {...},             # optional: what GR00T clients are told
     "action_names": ["shoulder_pan", ...]}      # optional: stated in the handshake

Several robot keys of one state feature are concatenated in the order given (their `dims` must add up to the
feature's). An image key's `dims` may be [1, -1, -1, 3] (a GR00T video of one frame). A checkpoint feature no
robot key feeds is refused at start-up, naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK = "task"
IMAGE_PREFIX = "observation.images."
GR00T_LANGUAGE = "annotation.human.task_description"


class KeyMapError(ValueError):
    """A key map that does not fit the checkpoint: the message names the key map, the key and the feature."""


@dataclass(frozen=True)
class RobotKey:
    key: str              # what the robot sends
    input: str            # the model input (a Triton tensor name)
    feature: str          # the checkpoint feature it feeds, or "task"
    datatype: str         # TYPE_UINT8, TYPE_FP32 or TYPE_STRING
    dims: tuple[int, ...]


@dataclass(frozen=True)
class KeyMap:
    name: str
    keys: tuple[RobotKey, ...]
    outputs: dict[str, Any]          # output_map of the ensemble: response key -> {"output": "actions", ...}
    modality: dict[str, Any] | None = None
    action_names: list[str] | None = None
    plan: dict[str, list[str]] = field(default_factory=dict)  # feature -> model inputs, for the python model


def _cameras(meta: dict[str, Any]) -> list[str]:
    return [name for name, f in meta["input_features"].items()
            if f["type"] == "VISUAL" and ".empty_camera_" not in name]


def _states(meta: dict[str, Any]) -> list[str]:
    return [name for name, f in meta["input_features"].items() if f["type"] == "STATE"]


def _dim(meta: dict[str, Any], feature: str) -> int:
    table = meta["input_features"] if feature in meta["input_features"] else meta["output_features"]
    return int(table[feature]["shape"][-1])


def _assign_cameras(preset: str, robot_cameras: list[tuple[str, str]], meta: dict[str, Any]) -> dict[str, str]:
    """Checkpoint cameras <- robot camera keys: by short name where they agree (`cam_high`), else in order."""
    cams = _cameras(meta)
    if len(cams) > len(robot_cameras):
        raise KeyMapError(f"key map {preset!r}: the checkpoint has {len(cams)} cameras {cams}, a {preset} robot "
                          f"sends {len(robot_cameras)} ({[key for key, _ in robot_cameras]}); write a key map file")
    by_name = {short: key for key, short in robot_cameras}
    if all(cam.removeprefix(IMAGE_PREFIX) in by_name for cam in cams):
        return {by_name[cam.removeprefix(IMAGE_PREFIX)]: cam for cam in cams}
    return {key: cam for (key, _), cam in zip(robot_cameras, cams, strict=False)}


def _openpi_preset(name: str, cameras: list[tuple[str, str]], state: list[tuple[str, int]],
                   meta: dict[str, Any]) -> dict[str, Any]:
    observation: dict[str, Any] = dict(_assign_cameras(name, cameras, meta))
    states = _states(meta)
    if len(states) != 1:
        raise KeyMapError(f"key map {name!r}: the checkpoint has state features {states}, the preset feeds one")
    for key, dim in state:
        observation[key] = {"feature": states[0], "dims": [dim]}
    observation["prompt"] = TASK
    return {"observation": observation, "actions": {"actions": {}}}


def _gr00t_preset(meta: dict[str, Any]) -> dict[str, Any]:
    """GR00T N1.6 keys: `video.<camera>` [1, H, W, 3], `state.*` [1, D], the task description; an SO-100/101
    arm (6 dims) is split into single_arm (5) and gripper (1) as GR00T's SO-100 examples do."""
    chunk, states = int(meta["chunk_size"]), _states(meta)
    if len(states) != 1:
        raise KeyMapError(f"key map 'gr00t': the checkpoint has state features {states}, the preset feeds one")
    state_dim, action_dim = _dim(meta, states[0]), _dim(meta, "action")
    split = [("single_arm", 5), ("gripper", 1)]
    state_parts = split if state_dim == 6 else [("state", state_dim)]
    action_parts = split if action_dim == 6 else [("action", action_dim)]
    observation: dict[str, Any] = {}
    videos = []
    for cam in _cameras(meta):
        short = cam.removeprefix(IMAGE_PREFIX)
        observation[f"video.{short}"] = {"feature": cam, "dims": [1, -1, -1, 3]}
        videos.append(short)
    for key, dim in state_parts:
        observation[f"state.{key}"] = {"feature": states[0], "dims": [1, dim]}
    observation[GR00T_LANGUAGE] = TASK
    actions, offset = {}, 0
    for key, dim in action_parts:
        actions[f"action.{key}"] = {"slice": [chunk, dim], "offset": [0, offset]}
        offset += dim
    absolute = {"rep": "ABSOLUTE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None}
    modality = {
        "video": {"delta_indices": [0], "modality_keys": videos},
        "state": {"delta_indices": [0], "modality_keys": [k for k, _ in state_parts],
                  "sin_cos_embedding_keys": None, "mean_std_embedding_keys": None},
        "action": {"delta_indices": list(range(chunk)), "modality_keys": [k for k, _ in action_parts],
                   "action_configs": [absolute for _ in action_parts]},
        "language": {"delta_indices": [0], "modality_keys": [GR00T_LANGUAGE]},
    }
    return {"observation": observation, "actions": actions, "gr00t_modality_config": modality}


def preset(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A preset key map, in the JSON form, for the checkpoint described by `meta` (its `lerobot` metadata)."""
    if name == "droid":  # openpi examples/droid
        return _openpi_preset(name, [("observation/exterior_image_1_left", "exterior_image_1_left"),
                                     ("observation/wrist_image_left", "wrist_image_left")],
                              [("observation/joint_position", 7), ("observation/gripper_position", 1)], meta)
    if name == "libero":  # openpi examples/libero
        return _openpi_preset(name, [("observation/image", "image"), ("observation/wrist_image", "wrist_image")],
                              [("observation/state", 8)], meta)
    if name == "aloha":  # openpi examples/aloha_real
        cams = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
        return _openpi_preset(name, [(f"images/{cam}", cam) for cam in cams], [("state", 14)], meta)
    if name == "gr00t":
        return _gr00t_preset(meta)
    raise KeyMapError(f"no key map preset {name!r}; presets: {', '.join(PRESETS)}, or the path of a JSON file")


PRESETS = ("droid", "libero", "aloha", "gr00t")


def default_key_map(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's own feature names."""
    observation: dict[str, Any] = {name: name for name in (*_cameras(meta), *_states(meta))}
    observation[TASK] = TASK
    return {"observation": observation, "actions": {"actions": {}}}


def load_key_map(spec: str | None, meta: dict[str, Any]) -> KeyMap:
    """`spec`: None (the checkpoint's names), a preset name or the path of a JSON file."""
    if spec is None:
        return parse_key_map("default", default_key_map(meta), meta)
    if spec in PRESETS:
        return parse_key_map(spec, preset(spec, meta), meta)
    path = Path(spec)
    if not path.is_file():
        raise KeyMapError(f"key map {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise KeyMapError(f"key map {spec}: not valid JSON ({error})") from None
    return parse_key_map(spec, raw, meta)


def _input_name(key: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", key).strip("_") or "input"
    while name in taken or name == "seed":
        name += "_"
    taken.add(name)
    return name


def parse_key_map(name: str, raw: Any, meta: dict[str, Any]) -> KeyMap:
    if not isinstance(raw, dict) or not isinstance(raw.get("observation"), dict):
        raise KeyMapError(f"key map {name!r}: must be a JSON object with an 'observation' object")
    unknown = set(raw) - {"observation", "actions", "gr00t_modality_config", "action_names"}
    if unknown:
        raise KeyMapError(f"key map {name!r}: unknown fields {sorted(unknown)}")
    features = {n: f for n, f in meta["input_features"].items() if ".empty_camera_" not in n and
                f["type"] in ("VISUAL", "STATE")}
    keys, taken, plan = [], set(), {}
    for key, entry in raw["observation"].items():
        entry = {"feature": entry} if isinstance(entry, str) else entry
        feature = entry.get("feature") if isinstance(entry, dict) else None
        if feature != TASK and feature not in features:
            raise KeyMapError(f"key map {name!r}: robot key {key!r} maps to {feature!r}, which is not a feature of "
                              f"the checkpoint (it has {sorted(features)} and 'task')")
        kind = TASK if feature == TASK else features[feature]["type"]
        default = {TASK: [1], "VISUAL": [-1, -1, 3], "STATE": [_dim(meta, feature)] if kind == "STATE" else []}[kind]
        dims = entry.get("dims", default)
        if kind == "VISUAL" and dims not in ([-1, -1, 3], [1, -1, -1, 3]):
            raise KeyMapError(f"key map {name!r}: image key {key!r} dims must be [-1, -1, 3] or [1, -1, -1, 3]")
        if kind == "STATE" and not (isinstance(dims, list) and dims and all(isinstance(d, int) and d > 0
                                                                          for d in dims)):
            raise KeyMapError(f"key map {name!r}: state key {key!r} needs positive integer dims, got {dims!r}")
        datatype = {TASK: "TYPE_STRING", "VISUAL": "TYPE_UINT8", "STATE": "TYPE_FP32"}[kind]
        robot_key = RobotKey(key, _input_name(key, taken), feature, datatype, tuple(dims))
        keys.append(robot_key)
        plan.setdefault(feature, []).append(robot_key.input)
    for feature, inputs in plan.items():
        if feature == TASK or features[feature]["type"] == "VISUAL":
            if len(inputs) > 1:
                raise KeyMapError(f"key map {name!r}: {feature!r} is fed by several robot keys; only state "
                                  "features are concatenated")
        else:
            given = sum(k.dims[-1] for k in keys if k.feature == feature)
            if given != _dim(meta, feature):
                parts = " + ".join(f"{k.key} {k.dims[-1]}" for k in keys if k.feature == feature)
                raise KeyMapError(f"key map {name!r}: {feature!r} has {_dim(meta, feature)} dims in the checkpoint, "
                                  f"the robot keys give {given} ({parts})")
    unfed = [f for f in (*features, TASK) if f not in plan]
    if unfed:
        raise KeyMapError(f"key map {name!r}: the checkpoint needs {unfed}, which no robot key of this format "
                          "provides")
    outputs = _outputs(name, raw.get("actions", {"actions": {}}), meta)
    names = raw.get("action_names")
    if names is not None and (not isinstance(names, list) or len(names) != _dim(meta, "action")):
        raise KeyMapError(f"key map {name!r}: action_names must list {_dim(meta, 'action')} names")
    return KeyMap(name, tuple(keys), outputs, raw.get("gr00t_modality_config"), names, plan)


def _outputs(name: str, actions: Any, meta: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(actions, dict) or not actions:
        raise KeyMapError(f"key map {name!r}: 'actions' must map response keys to {{}} or a slice/offset")
    outputs = {}
    for key, cut in actions.items():
        if not isinstance(cut, dict) or set(cut) - {"slice", "offset"}:
            raise KeyMapError(f"key map {name!r}: 'actions' {key!r} must be {{}} or {{'slice': [...], 'offset': "
                              "[...]}")
        outputs[key] = {"output": "actions", **cut}
    return outputs
