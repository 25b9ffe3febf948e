"""When each simulated robot asks for an action chunk, and when its answer is due.

One definition for every benchmark row:

- A robot runs its controller at `rate_hz` and plays `replan_steps` actions of each chunk, so it asks
  for a new chunk every `period = replan_steps / rate_hz` seconds.
- It asks as it starts playing those last actions, so the answer must arrive before they run out:
  **deadline = period** unless `deadline_s` is given. A later answer is a *deadline miss*.
- One request in flight per robot (the OpenPI client is request/response). When an answer is late,
  the robot asks again as soon as it arrives (the schedule slips rather than piling up requests).
- `rate_hz = 0` is closed loop: every robot asks again the moment it has its answer (no deadline
  unless `deadline_s` is given).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    rate_hz: float = 10.0
    replan_steps: int = 5
    deadline_s: float | None = None

    @property
    def period_s(self) -> float:
        return self.replan_steps / self.rate_hz if self.rate_hz > 0 else 0.0

    @property
    def deadline(self) -> float | None:
        if self.deadline_s is not None:
            return self.deadline_s
        return self.period_s or None

    def describe(self) -> str:
        if self.rate_hz <= 0:
            text = "closed loop (each robot asks again as soon as it has its answer)"
        else:
            text = (f"{self.rate_hz:g} Hz control, new chunk every {self.replan_steps} steps "
                    f"(one request per {self.period_s * 1000:.0f} ms per robot)")
        deadline = self.deadline
        return text + (f", deadline {deadline * 1000:.0f} ms" if deadline else "")


def parse_robot_counts(text: str) -> tuple[int, ...]:
    """"1,4,16" -> (1, 4, 16); ValueError unless every count is a positive integer."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated robot counts such as 1,4,16; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"robot counts must be positive integers; got {text!r}")
    return counts
