"""GetActions replies: a pickled `list[TimedAction]` as LeRobot's `RobotClient` reads it.

The client unpickles the reply with `pickle.loads` and calls `.device`, `.to()` and `.item()` on each action,
so each action is a 1-D float32 torch tensor on the CPU, and each item an instance of lerobot's own
`TimedAction` (module `lerobot.async_inference.helpers`; its state is its __dict__: timestamp, timestep,
action). Importing that module would import all of lerobot's policies and datasets, so the reply is written
with a class of ours that the pickle names by lerobot's path: the pure-Python pickler (the C one insists that
a class it names can be imported under that name here) writes that global by hand. torch is imported on the
first reply only.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

CLIENT_MODULE = "lerobot.async_inference.helpers"
# The client's channel refuses messages over 4 MiB (lerobot.transport.utils.MAX_MESSAGE_SIZE).
CLIENT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class TimedAction:
    """lerobot's TimedAction as the client will see it: plain attributes, pickled under lerobot's name."""

    def __init__(self, timestamp: float, timestep: int, action: Any) -> None:
        self.timestamp, self.timestep, self.action = timestamp, timestep, action


class _ReplyPickler(pickle._Pickler):  # type: ignore[name-defined]  # the Python pickler: save_global overridable
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is TimedAction:
            self.save(CLIENT_MODULE)
            self.save("TimedAction")
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def warm_up() -> None:
    """Import torch and write one reply: the first import takes seconds, which must not stall a robot's call
    (the endpoint calls this in a thread at start)."""
    encode_actions(np.zeros((1, 1), np.float32), 0, 0.0, 0.0)


class ReplyTooLarge(ValueError):
    """The actions do not fit in one message the client accepts."""


def encode_actions(actions: np.ndarray, first_timestep: int, first_timestamp: float, dt: float) -> bytes:
    """Pickle `actions` [n, action_dim] as n TimedActions: timestep first_timestep + i, timestamp
    first_timestamp + i * dt, action a float32 CPU tensor of its own (not a view: a view would pickle the whole
    chunk's storage with every action)."""
    import torch

    if actions.ndim != 2:
        raise ValueError(f"actions must be [steps, action_dim], got shape {list(actions.shape)}")
    chunk = torch.from_numpy(np.array(actions, dtype=np.float32))  # a copy: Triton's arrays are read-only
    timed = [TimedAction(first_timestamp + i * dt, first_timestep + i, chunk[i].clone()) for i in range(len(chunk))]
    buffer = io.BytesIO()
    _ReplyPickler(buffer, protocol=4).dump(timed)
    payload = buffer.getvalue()
    if len(payload) >= CLIENT_MAX_MESSAGE_BYTES:
        raise ReplyTooLarge(f"{len(timed)} actions of {actions.shape[1]} values pickle to {len(payload)} bytes, over "
                            f"the client's limit of {CLIENT_MAX_MESSAGE_BYTES}; ask for fewer actions_per_chunk")
    return payload
