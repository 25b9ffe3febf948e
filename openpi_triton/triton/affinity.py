"""Sequence affinity: a stateful session's Triton sequence starts on one replica and stays there, since
the policy's state lives on that replica. When the replica goes away, the session's next call raises
SequenceLost and its next sequence starts elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterable

from openpi_triton.triton.replica_set import Replica


class SequenceAffinity:
    """Which replica holds each stateful session (Triton sequence id)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s  # how long a call may take: a replica down longer has lost its sessions
        self._held: dict[int, Replica] = {}

    def held_by(self, sequence_id: int) -> Replica | None:
        return self._held.get(sequence_id)

    def started(self, sequence_id: int, replica: Replica) -> None:
        self._held[sequence_id] = replica

    def forget(self, sequence_id: int) -> None:
        self._held.pop(sequence_id, None)

    def gone(self, replica: Replica, replicas: Iterable[Replica]) -> str:
        """Why a stateful session can no longer count on `replica`, or "": it left the pool, or its checks
        have failed for longer than a call may take while another replica (of `replicas`) is ready. A replica
        whose checks fail only briefly keeps its sessions: a slow check must not cost a robot its state."""
        if replica.retired:
            return replica.retired
        down_long = not replica.ready and time.monotonic() - replica.down_since > self.timeout_s
        if down_long and any(r.ready for r in replicas if r is not replica):
            return replica.problem
        return ""
