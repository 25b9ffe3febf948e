"""Routing of calls over Triton replicas: which replica takes a call, and the bookkeeping of one call
(calls in flight, a replica found unreachable, the per-replica metrics)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from openpi_triton.triton.backend import BackendRejected, BackendUnavailable, SequenceFlags, SequenceLost
from openpi_triton.triton.policy import Policy
from openpi_triton.triton.replica_set import Replica

# (replica address, outcome, seconds) of every call: the front's per-replica metrics.
CallObserver = Callable[[str, str, float], None]


def pick(replicas: Iterable[Replica], policy: Policy, turns: Iterator[int], exclude: Replica | None = None,
         ready_only: bool = False) -> Replica | None:
    """The replica with the fewest calls in flight among those ready that serve `policy` (else those
    ready, else, unless `ready_only`, any: the checks may lag behind a Triton that is back); equals
    take turns (`turns` counts them)."""
    candidates_all = [r for r in replicas if r is not exclude]
    ready = [r for r in candidates_all if r.ready]
    candidates = [r for r in ready if r.serves(policy)] or ready or ([] if ready_only else candidates_all)
    if not candidates:
        return None
    turn = next(turns)
    order = {id(r): (i - turn) % len(candidates) for i, r in enumerate(candidates)}
    return min(candidates, key=lambda r: (r.outstanding, order[id(r)]))


async def call(replica: Replica, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str,
               sequence: SequenceFlags | None, on_call: CallObserver | None) -> dict[str, np.ndarray]:
    """One call on `replica`: counted in flight, and a replica found unreachable is down at once (until a
    check finds it ready again)."""
    replica.outstanding += 1
    started, outcome = time.monotonic(), "error"
    try:
        outputs = await replica.backend.infer(policy, tensors, request_id, sequence)
        outcome = "ok"
        return outputs
    except BackendUnavailable as error:
        outcome = "unreachable" if error.unreachable else "timeout" if error.timed_out else "unavailable"
        if error.unreachable:
            replica.failed_at = time.monotonic()
            replica.set_problem(str(error))
        raise
    except SequenceLost:
        outcome = "sequence_lost"
        raise
    except BackendRejected:
        outcome = "rejected"
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        replica.outstanding -= 1
        if on_call is not None:
            on_call(replica.address, outcome, time.monotonic() - started)
