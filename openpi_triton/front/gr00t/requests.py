"""`get_action` in both msgpack generations of GR00T clients, as the policy's flat observation and back.

- N1.5: `data` is the flat observation (`video.<cam>`, `state.<key>`, the language key with a list of
  strings); the reply is a flat map of `action.<key>`. It is batched (B environments, leading axis) when
  every state array has 3 dims or more, as GR00T's own policy decides; an unbatched reply has each action
  array squeezed (`np.squeeze`: a gripper's [16, 1] comes back as [16]), as GR00T's does.
- N1.6: `data` is `{"observation": ..., "options": ...}` (they are keyword arguments there: other keys are
  an error). The observation is nested, `{"video": {cam: [B, T, H, W, 3]}, "state": {key: [B, T, D]},
  "language": {language_key: [[text]] * B}}`, and the reply `[{<key>: [B, H, D]}, {}]` has bare keys; or
  flat as N1.5's with a list of B texts (GR00T's sim wrapper), and then `action.<key>` keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from openpi_triton.front.codec import ProtocolError
from openpi_triton.triton.modality import ModalityConfig, observation_key

N16_ARGUMENTS = ("observation", "options")
NESTED = ("video", "state", "language")


@dataclass(frozen=True)
class ActionRequest:
    observation: dict[str, Any]  # the policy's flat keys
    rows: int | None             # environments; None: one, unbatched (N1.5)
    nested: bool                 # N1.6 nested observation: bare action keys in the reply
    n16: bool                    # reply [action, info] instead of the action map


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {list(value.shape)}"
    return type(value).__name__


def _texts(value: Any, key: str, rows: int | None) -> Any:
    """Language as the front takes it: one string, or a list of one per environment. GR00T clients send a
    list of strings (N1.5, sim wrapper) or a list of one-string lists (N1.6)."""
    if isinstance(value, list):
        value = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in value]
        if rows is None:
            if len(value) != 1:
                raise ProtocolError(f"key {key!r}: an unbatched observation takes one text, got a list of {len(value)}")
            return value[0]
    return value


def _rows(observation: dict[str, Any], config: ModalityConfig) -> int:
    """B of a batched observation: the leading axis of its first video or state array."""
    for modality in ("video", "state"):
        for key in config.modality(modality).keys:
            value = observation.get(observation_key(modality, key))
            if isinstance(value, np.ndarray):
                if value.ndim == 0 or value.shape[0] == 0:
                    raise ProtocolError(f"key {observation_key(modality, key)!r}: a batched observation needs a "
                                        f"leading axis of one or more environments, got {_describe(value)}")
                return int(value.shape[0])
    keys = [observation_key(m, k) for m in ("video", "state") for k in config.modality(m).keys]
    raise ProtocolError(f"the observation has none of the arrays {keys}")


def _flatten_nested(observation: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(observation) - set(NESTED))
    if unknown:
        raise ProtocolError(f"observation keys {unknown[:10]} are unknown; an N1.6 observation holds the maps "
                            f"{list(NESTED)}")
    flat = {}
    for modality in NESTED:
        group = observation.get(modality, {})
        if not isinstance(group, dict):
            raise ProtocolError(f"observation {modality!r} must be a map of key to value, got {_describe(group)}")
        for key, value in group.items():
            flat[key if modality == "language" else observation_key(modality, key)] = value
    return flat


def parse_get_action(data: Any, config: ModalityConfig) -> ActionRequest:
    """The flat observation of one `get_action` `data`, with its generation; ProtocolError says what is wrong."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(f"get_action data must be a map (the observation), got {_describe(data)}")
    if "observation" in data:
        unexpected = sorted(set(data) - set(N16_ARGUMENTS))
        if unexpected:
            raise ProtocolError(f"get_action() got unexpected arguments {unexpected[:10]}; it takes "
                                f"{list(N16_ARGUMENTS)}")
        if not isinstance(data.get("options"), (dict, type(None))):
            raise ProtocolError(f"get_action options must be a map or nil, got {_describe(data['options'])}")
        observation = data["observation"]
        if not isinstance(observation, dict):
            raise ProtocolError(f"get_action observation must be a map, got {_describe(observation)}")
        nested = any(isinstance(observation.get(group), dict) for group in NESTED)
        flat = _flatten_nested(observation) if nested else dict(observation)
        rows: int | None = _rows(flat, config)
        n16 = True
    else:
        flat, nested, n16 = dict(data), False, False
        states = [flat.get(observation_key("state", key)) for key in config.state.keys]
        batched = all(isinstance(s, np.ndarray) and s.ndim >= 3 for s in states if s is not None) and any(
            s is not None for s in states)
        rows = _rows(flat, config) if batched else None
    language = config.language_key
    if language in flat:
        flat[language] = _texts(flat[language], language, rows)
    return ActionRequest(flat, rows, nested, n16)


def action_reply(request: ActionRequest, actions: dict[str, np.ndarray], config: ModalityConfig) -> Any:
    """The reply to `request` from the policy's actions (`action.<key>` -> [rows, H, D])."""
    reply = {}
    for key in config.action.keys:
        value = actions[observation_key("action", key)]
        if request.rows is None:
            value = np.squeeze(value[0])
        reply[key if request.nested else observation_key("action", key)] = value
    return [reply, {}] if request.n16 else reply
