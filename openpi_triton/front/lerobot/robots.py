"""What the endpoint remembers of each LeRobot client (keyed by its gRPC peer, one robot per connection), with
LeRobot's PolicyServer semantics per robot rather than for one robot at a time:

- a queue of one: only the newest observation waits for GetActions;
- an observation is queued when `must_go` is set, or it is the first, or its timestep has not been predicted
  yet and its joint state is at least `similarity` (L2) from the last observation taken for inference;
- GetActions takes the queued observation (long-polling for one) and records its timestep as predicted.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openpi_triton.front.lerobot.features import Binding

# Timesteps remembered as predicted, per robot: LeRobot's server keeps them all; a long episode is bounded here
# (the oldest are forgotten: the client never sends a timestep far behind its newest action).
MAX_PREDICTED = 100_000


@dataclass
class Pending:
    """An observation accepted for inference, already checked and turned into the policy's tensors."""

    binding: Binding  # the instructions it was checked against
    timestep: int
    timestamp: float
    tensors: dict[str, np.ndarray]
    state: np.ndarray | None
    received: float = field(default_factory=time.monotonic)


class Robot:
    def __init__(self, similarity: float) -> None:
        self.similarity = similarity
        self.binding: Binding | None = None
        self.last_seen = time.monotonic()
        self.busy = 0  # calls in progress
        self._pending: Pending | None = None
        self._arrived = asyncio.Event()
        self._predicted: OrderedDict[int, None] = OrderedDict()
        self._last_state: np.ndarray | None = None
        self._any_processed = False

    def reset(self) -> None:
        """Ready(): a fresh start, as LeRobot's server resets its queue and predicted timesteps."""
        self._pending = None
        self._arrived.clear()
        self._predicted.clear()
        self._last_state, self._any_processed = None, False

    def _similar(self, state: np.ndarray | None) -> bool:
        if state is None or self._last_state is None or state.shape != self._last_state.shape:
            return False
        with np.errstate(invalid="ignore", over="ignore"):
            return bool(np.linalg.norm(state.astype(np.float64) - self._last_state) < self.similarity)

    def offer(self, pending: Pending, must_go: bool) -> bool:
        """Queue the observation if it must be processed (replacing an older one waiting); False if filtered."""
        if not (must_go or not self._any_processed or (
                pending.timestep not in self._predicted and not self._similar(pending.state))):
            return False
        self._pending = pending
        self._arrived.set()
        return True

    async def take(self, timeout_s: float) -> Pending | None:
        """The waiting observation, after waiting up to `timeout_s` for one; None when none came."""
        if self._pending is None:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None
        pending, self._pending = self._pending, None
        self._arrived.clear()
        if pending is None:  # another GetActions of this robot took it first
            return None
        self._predicted[pending.timestep] = None
        while len(self._predicted) > MAX_PREDICTED:
            self._predicted.popitem(last=False)
        self._last_state = None if pending.state is None else pending.state.astype(np.float64)
        self._any_processed = True
        return pending

    @property
    def predicted(self) -> set[int]:
        return set(self._predicted)


class Robots:
    """Every client's Robot; at most `limit` at once, each forgotten after `idle_timeout_s` without a call."""

    def __init__(self, limit: int, idle_timeout_s: float, similarity: float) -> None:
        self.limit, self.idle_timeout_s, self.similarity = limit, idle_timeout_s, similarity
        self._robots: dict[str, Robot] = {}

    def __len__(self) -> int:
        return len(self._robots)

    def get(self, peer: str) -> Robot | None:
        robot = self._robots.get(peer)
        if robot is not None:
            robot.last_seen = time.monotonic()
        return robot

    def admit(self, peer: str) -> Robot | None:
        """The peer's Robot, created on its first call; None when the server is at its limit."""
        robot = self.get(peer)
        if robot is None:
            self.expire()
            if len(self._robots) >= self.limit:
                return None
            robot = self._robots[peer] = Robot(self.similarity)
        return robot

    def expire(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        idle = [peer for peer, robot in self._robots.items()
                if robot.busy == 0 and now - robot.last_seen > self.idle_timeout_s]
        for peer in idle:
            del self._robots[peer]
        return idle

    def forget(self, peer: str) -> None:
        self._robots.pop(peer, None)

    def bound(self) -> dict[str, Any]:
        """Connected robots per policy name (for the connections gauge)."""
        counts: dict[str, Any] = {}
        for robot in self._robots.values():
            name = robot.binding.policy.name if robot.binding is not None else ""
            counts[name] = counts.get(name, 0) + 1
        return counts
