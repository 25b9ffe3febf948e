"""`ReplicaPool`, the `Backend` the front uses: calls routed over the Triton replicas of a `ReplicaSet`.

- Stateless policies go to the ready replica with the fewest calls in flight (`routing`). A call that
  fails without running (its replica unreachable, or the policy's models down there) is retried once on
  another ready replica, so a robot sees no error when one replica dies between its steps.
- A stateful session's Triton sequence starts on the least busy ready replica and stays there
  (`affinity`). When that replica goes away (it left DNS, a call found it unreachable while another
  replica is ready, or its checks have failed for longer than a call may take), the session's next call
  raises SequenceLost, and its next sequence starts on another replica.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping

import numpy as np

from openpi_triton.config import TRITON_CHECK_INTERVAL_S, TRITON_RESOLVE_INTERVAL_S, TRITON_TIMEOUT_S
from openpi_triton.triton.addresses import resolve
from openpi_triton.triton.affinity import SequenceAffinity
from openpi_triton.triton.backend import BackendUnavailable, SequenceFlags, SequenceLost
from openpi_triton.triton.health import Health
from openpi_triton.triton.policy import Policy
from openpi_triton.triton.replica_set import Replica, ReplicaSet, Resolver
from openpi_triton.triton.routing import CallObserver, call, pick

log = logging.getLogger("openpi_triton.replicas")


class ReplicaPool(ReplicaSet):
    """`url`: --triton-url (one or more host:port, comma-separated). `health`: the supervisor's, shared
    when `url` is one IP address; every other replica keeps its own."""

    def __init__(self, url: str, timeout_s: float = TRITON_TIMEOUT_S, shared_memory: bool = False,
                 health: Health | None = None, resolve_interval_s: float = TRITON_RESOLVE_INTERVAL_S,
                 check_interval_s: float = TRITON_CHECK_INTERVAL_S, resolver: Resolver = resolve) -> None:
        super().__init__(url, timeout_s, shared_memory, health, resolve_interval_s, check_interval_s, resolver)
        self.on_call: CallObserver | None = None
        self._affinity = SequenceAffinity(timeout_s)
        self._turns = itertools.count()

    async def infer(self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str,
                    sequence: SequenceFlags | None = None) -> dict[str, np.ndarray]:
        if sequence is not None and not sequence.start:
            return await self._continue_sequence(policy, tensors, request_id, sequence)
        replica, outputs = await self._route(policy, tensors, request_id, sequence)
        if sequence is not None and not sequence.end:
            self._affinity.started(sequence.id, replica)
        return outputs

    def _pick(self, policy: Policy, exclude: Replica | None = None, ready_only: bool = False) -> Replica | None:
        return pick(self._replicas.values(), policy, self._turns, exclude, ready_only)

    async def _route(self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str,
                     sequence: SequenceFlags | None) -> tuple[Replica, dict[str, np.ndarray]]:
        """A stateless call, or the first of a sequence: retried once elsewhere when nothing ran."""
        replica = self._pick(policy)
        if replica is None:
            raise BackendUnavailable("policy backend unavailable (no Triton replica: "
                                     + "; ".join(self._dns_problems.values() or ["none resolved yet"]) + ")")
        try:
            return replica, await call(replica, policy, tensors, request_id, sequence, self.on_call)
        except BackendUnavailable as error:
            other = None if error.timed_out else self._pick(policy, exclude=replica, ready_only=True)
            if other is None:
                raise
            log.warning("retrying on another Triton replica", extra={
                "policy": policy.name, "request_id": request_id, "replica": replica.address,
                "retry_replica": other.address, "error": str(error)})
            return other, await call(other, policy, tensors, request_id, sequence, self.on_call)

    async def _continue_sequence(self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str,
                                 sequence: SequenceFlags) -> dict[str, np.ndarray]:
        replica = self._affinity.held_by(sequence.id)
        try:
            if replica is None:
                raise SequenceLost("this front does not know which Triton replica held it")
            gone = self._affinity.gone(replica, self._replicas.values())
            if gone:
                raise SequenceLost(f"the Triton replica that held it, {replica.address}, went away: {gone}")
            try:
                return await call(replica, policy, tensors, request_id, sequence, self.on_call)
            except BackendUnavailable as error:
                # Only worth a new sequence when another replica can take it; else the session waits here.
                if error.unreachable and self._pick(policy, exclude=replica, ready_only=True) is not None:
                    raise SequenceLost(f"the Triton replica that held it, {replica.address}, went away: "
                                       f"{error}") from None
                raise
        except SequenceLost:
            self._affinity.forget(sequence.id)
            raise
        finally:
            if sequence.end:
                self._affinity.forget(sequence.id)
