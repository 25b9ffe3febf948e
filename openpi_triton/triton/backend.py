"""What the front asks of its policy backend, with no transport in it: the `Backend` Protocol, the flags
of a stateful policy's sequence and the errors a call can end with. The front and fake backends (tests,
benchmarks) import this module, never tritonclient; `client.TritonBackend` and `replicas.ReplicaPool`
implement it over gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from openpi_triton.triton.policy import Policy


class BackendUnavailable(RuntimeError):
    """Triton cannot be reached, did not answer in time, or the policy's models are down.

    `unreachable`: the server did not take the call (connection refused or lost): it is down. `timed_out`:
    no answer within the call's limit, and the request may still run there. Otherwise the policy's models
    are down on that server and nothing ran."""

    def __init__(self, message: str, unreachable: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.unreachable, self.timed_out = unreachable, timed_out


class BackendRejected(RuntimeError):
    """Triton answered with an error for this request (bad tensor, model failure)."""


class SequenceLost(BackendRejected):
    """A stateful session's Triton sequence is gone: the policy's state restarted. The message says why."""


@dataclass(frozen=True)
class SequenceFlags:
    """Triton sequence flags for one call of a stateful policy."""

    id: int
    start: bool = False
    end: bool = False


class Backend(Protocol):
    """What the front asks of the policy backend."""

    @property
    def policies(self) -> dict[str, Policy]: ...

    config_errors: dict[str, str]

    async def discover(self, force: bool = False) -> dict[str, Policy]: ...

    async def policy(self, name: str) -> Policy | None: ...

    async def readiness(self, names: list[str]) -> tuple[bool, str]: ...

    async def infer(self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str,
                    sequence: SequenceFlags | None = None) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ReplicaStatus:
    """One Triton replica as /metrics and /readyz show it."""

    address: str
    ready: bool
    outstanding: int
    problem: str


class Replicas(Protocol):
    """A backend over several Triton replicas (`replicas.ReplicaPool`), as the front's metrics read it."""

    def replicas(self) -> list[ReplicaStatus]: ...
