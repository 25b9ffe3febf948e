"""Robots on the stock openpi_client for the fault and replica tests: each loops in a thread and records
what every frame got."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed

from openpi_triton.example_observations import aloha, droid, libero

from .waiting import wait_until

COUNTER = "session_counter"  # the stateful test policy (tests/model_repository): its answers count steps


def _step(answer: dict[str, Any]) -> str:
    return str(int(answer["step"][0]))


@dataclass
class Robot:
    """A robot loop on the stock openpi_client in a thread: what each frame got, in order. The text of an
    answer is `read(answer)` (the step, for the counter policy), of an error the server's text."""

    url: str
    policy: str
    observation: dict[str, Any]
    read: Callable[[dict[str, Any]], str] | None = None
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, "ok" | "error" | "closed", text)
    sent: list[float] = field(default_factory=list)  # when the frame of each event was sent
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client = WebsocketClientPolicy(host=f"ws://{self.url}/v1/realtime/robot/openpi/{self.policy}")
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                answer = self.client.infer(self.observation)
                finite = all(np.isfinite(v).all() for v in answer.values()
                             if isinstance(v, np.ndarray) and v.dtype.kind in "fc")
                text = self.read(answer) if self.read is not None else ""
                self._record(sent, "ok" if finite else "nonfinite", text)
            except RuntimeError as error:  # openpi_client's error text from the server
                self._record(sent, "error", str(error))
                time.sleep(0.05)
            except ConnectionClosed as closed:
                self._record(sent, "closed", str(closed))
                return

    def _record(self, sent: float, kind: str, text: str) -> None:
        self.sent.append(sent)
        self.events.append((time.monotonic(), kind, text))

    def frames(self) -> list[tuple[float, float, str]]:
        """(sent, answered, kind) of every frame so far."""
        return [(sent, at, kind) for sent, (at, kind, _) in zip(list(self.sent), list(self.events), strict=False)]

    def after(self, moment: float) -> list[tuple[float, str, str]]:
        return [event for event in list(self.events) if event[0] >= moment]

    def served_since(self, moment: float) -> bool:
        return any(kind == "ok" for _, kind, _ in self.after(moment))

    def recovered_since(self, moment: float) -> bool:
        """An error after `moment`, then an answer after that error."""
        events = self.after(moment)
        errors = [i for i, event in enumerate(events) if event[1] == "error"]
        return bool(errors) and any(event[1] == "ok" for event in events[errors[0]:])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.client._ws.close()  # openpi_client has no close of its own


def robot(url: str, policy: str, seed: int = 0) -> Robot:
    if policy == COUNTER:
        return Robot(url, policy, {"inputs": {"x": np.zeros(1, np.float32)}}, read=_step)
    observation = {"libero": libero, "droid": droid, "aloha": aloha}[policy](np.random.default_rng(seed))
    return Robot(url, policy, observation)


@contextlib.contextmanager
def fleet(url: str, spec: dict[str, int]) -> Iterator[list[Robot]]:
    """`spec`: robots per policy, started in this order; yielded once every robot has had an answer."""
    robots = [robot(url, policy, i) for policy, count in spec.items() for i in range(count)]
    try:
        wait_until(lambda: all(r.served_since(0) for r in robots), "every robot has actions", 120)
        yield robots
    finally:
        for r in robots:
            r.close()


def counter_step(client: WebsocketClientPolicy) -> int:
    return int(client.infer({"inputs": {"x": np.zeros(1, np.float32)}})["step"][0])
