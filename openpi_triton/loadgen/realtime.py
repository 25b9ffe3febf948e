"""A simulated real-time robot: it executes one action per control period from its current chunk while the
next chunk is computed, measures the inference delay in control steps, and asks for real-time chunking
(RTC) so that the new chunk continues the actions it is still executing (`front.rtc` for the keys).

The loop (one clock thread, inference on a worker thread, as a real robot runs it):
- after executing `replan_after` actions of the current chunk, it sends the next observation, with
  `rtc/delay` = the delay it expects (the largest of the last few measured, in control steps, rounded up) and
  `rtc/executed` (remembered mode) or `rtc/leftover` (explicit mode; the actions not executed yet);
- it keeps executing the current chunk while waiting; when the answer arrives after `d` control steps, it
  continues from the new chunk's action `d` (the first `d` ran from the old chunk meanwhile);
- a chunk boundary's jump is the largest per-joint difference between the last action executed from the old
  chunk and the first executed from the new one. Without RTC the new chunk was planned from the newer
  observation alone and jumps; with RTC its first actions follow the old chunk's.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RTC_MODES = ("remembered", "explicit", "off")
DELAY_HISTORY = 5  # measured delays the next estimate looks at


@dataclass
class RealtimeReport:
    control_hz: float
    mode: str
    steps: int = 0
    starved_steps: int = 0                      # control ticks with no action left (the robot holds still)
    jumps: list[float] = field(default_factory=list)          # per chunk boundary, robot units
    inner_steps: list[float] = field(default_factory=list)    # per executed step inside a chunk, for scale
    # per switch with delay d > 0: mean over the new chunk's first d actions of their largest per-joint distance
    # from the old chunk's actions that ran meanwhile (what RTC pulls together)
    follow_errors: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)   # per chunk, measured by the robot
    delays: list[int] = field(default_factory=list)           # per chunk, control steps it took
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        jumps, inner = np.asarray(self.jumps), np.asarray(self.inner_steps)
        lat = np.asarray(self.latencies_ms)
        return {
            "mode": self.mode, "control_hz": self.control_hz, "steps": self.steps, "chunks": len(lat),
            "starved_steps": self.starved_steps,
            "jump_mean": float(jumps.mean()) if jumps.size else None,
            "jump_max": float(jumps.max()) if jumps.size else None,
            "inner_step_mean": float(inner.mean()) if inner.size else None,
            "follow_error_mean": float(np.mean(self.follow_errors)) if self.follow_errors else None,
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_ms_mean": float(lat.mean()) if lat.size else None,
            "delay_steps_mean": float(np.mean(self.delays)) if self.delays else None,
            "errors": self.errors[:3],
        }


class RealtimeRobot:
    """`policy.infer(observation) -> {"actions": [chunk, action_dim]}` (an openpi_client policy) driven by a
    fixed-rate control loop; `observe(last_action)` makes the next observation."""

    def __init__(self, policy: Any, observe: Callable[[np.ndarray | None], dict[str, Any]], control_hz: float,
                 mode: str = "remembered", replan_after: int | None = None, action_key: str = "actions",
                 seed: int | None = None) -> None:
        if mode not in RTC_MODES:
            raise ValueError(f"RTC mode must be one of {RTC_MODES}, got {mode!r}")
        self.policy, self.observe, self.mode, self.action_key = policy, observe, mode, action_key
        self.period = 1.0 / control_hz
        self.report = RealtimeReport(control_hz, mode)
        self.replan_after = replan_after
        self.seed = seed
        self._delays: deque[int] = deque(maxlen=DELAY_HISTORY)

    def _frame(self, last: np.ndarray | None, chunk: np.ndarray | None, executed: int, delay: int) -> dict:
        frame = dict(self.observe(last))
        if self.seed is not None:
            frame["seed"] = self.seed + len(self.report.latencies_ms)
        if chunk is None or self.mode == "off":
            return frame
        delay = min(delay, len(chunk) - executed, len(chunk) - 1)
        if self.mode == "remembered":
            return {**frame, "rtc/executed": executed, "rtc/delay": delay}
        return {**frame, "rtc/leftover": chunk[executed:], "rtc/delay": delay}

    def _ask(self, frame: dict[str, Any]) -> tuple[np.ndarray | None, float]:
        started = time.perf_counter()
        try:
            answer = np.asarray(self.policy.infer(frame)[self.action_key], np.float32)
        except Exception as error:  # a refused frame: reported, the robot keeps going
            self.report.errors.append(str(error))
            answer = None
        return answer, (time.perf_counter() - started) * 1000

    def run(self, seconds: float) -> RealtimeReport:
        chunk, latency = self._ask(self._frame(None, None, 0, 0))
        if chunk is None:
            raise RuntimeError(f"the first chunk was refused: {self.report.errors[-1]}")
        self._record(latency, math.ceil(latency / 1000 / self.period))
        replan = self.replan_after or max(1, len(chunk) // 2)
        index, last, switched = 0, None, False
        pending: dict[str, Any] | None = None
        start, tick = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            if pending is not None and pending["done"].is_set():
                new, delay = pending["answer"], index - pending["executed"]  # steps run from the old chunk
                self._record(pending["latency"], delay)
                if new is not None and delay < len(new):
                    ran = chunk[pending["executed"]:index]
                    if len(ran):
                        self.report.follow_errors.append(float(np.abs(new[:len(ran)] - ran).max(-1).mean()))
                    chunk, index, switched = new, delay, True
                pending = None
            if index < len(chunk):
                action = chunk[index]
                if last is not None:
                    step = float(np.abs(action - last).max())
                    (self.report.jumps if switched else self.report.inner_steps).append(step)
                last, index, switched = action, index + 1, False
            else:
                self.report.starved_steps += 1
            self.report.steps += 1
            if pending is None and index >= replan:
                pending = self._start(last, chunk, index)
            tick += 1
            time.sleep(max(0.0, start + tick * self.period - time.perf_counter()))
        if pending is not None:
            pending["done"].wait(60)
        return self.report

    def _record(self, latency_ms: float, delay: int) -> None:
        self.report.latencies_ms.append(latency_ms)
        self.report.delays.append(delay)
        self._delays.append(delay)

    def _start(self, last: np.ndarray | None, chunk: np.ndarray, executed: int) -> dict[str, Any]:
        expected = max(self._delays) if self._delays else 1
        frame = self._frame(last, chunk, executed, expected)
        pending: dict[str, Any] = {"done": threading.Event(), "executed": executed, "answer": None, "latency": 0.0}

        def work() -> None:
            pending["answer"], pending["latency"] = self._ask(frame)
            pending["done"].set()

        threading.Thread(target=work, daemon=True).start()
        return pending


def lerobot_observer(metadata: dict[str, Any], seed: int = 0) -> Callable[[np.ndarray | None], dict[str, Any]]:
    """Observations for a served LeRobot policy from its handshake (`lerobot.input_features`): fixed camera
    frames, the state following the last executed action where the dims agree (a robot tracking its
    commands), and a fixed task."""
    rng = np.random.default_rng(seed)
    features = metadata["lerobot"]["input_features"]
    frames = {name: rng.integers(0, 256, (f["shape"][1], f["shape"][2], 3), dtype=np.uint8)
              for name, f in features.items() if f["type"] == "VISUAL" and ".empty_camera_" not in name}
    states = {name: rng.normal(size=f["shape"][-1]).astype(np.float32)
              for name, f in features.items() if f["type"] == "STATE"}

    def observe(last: np.ndarray | None) -> dict[str, Any]:
        observation: dict[str, Any] = {**frames, "task": "pick up the red cube"}
        for name, state in states.items():
            observation[name] = last.astype(np.float32) if last is not None and last.shape == state.shape else state
        return observation

    return observe
