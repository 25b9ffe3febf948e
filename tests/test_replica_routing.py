"""The replica pool's failover rule, exactly, on fake replicas (the real ones are killed in
test_replicas.py): a call that a replica did not take (unreachable) is retried once on another ready
replica and the robot never knows; a call that timed out is not retried (it may have run there), and the
robot is told."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import numpy as np
import pytest

from openpi_triton.triton import replica_set as replica_set_module
from openpi_triton.triton.backend import BackendUnavailable
from openpi_triton.triton.replicas import ReplicaPool
from openpi_triton.triton.repository import policy_from_repository

from .conftest import TEST_MODEL_REPOSITORY

POLICY = policy_from_repository(TEST_MODEL_REPOSITORY, "slow_policy")
A, B = "10.0.0.1:8001", "10.0.0.2:8001"


class FakeReplica:
    """A Triton replica that answers with its own address, or raises `failure` on each call."""

    instances: ClassVar[dict[str, FakeReplica]] = {}

    def __init__(self, address: str, timeout_s: float, shared_memory: bool, health: Any = None) -> None:
        self.address = address
        self.failure: Exception | None = None
        self.calls = 0
        self.policies = {POLICY.name: POLICY}
        self.config_errors: dict[str, str] = {}
        FakeReplica.instances[address] = self

    async def check(self, timeout_s: float) -> str | None:
        return None

    async def discover(self, force: bool = False) -> dict[str, Any]:
        return self.policies

    async def infer(self, policy, tensors, request_id, sequence=None) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return {"replica": np.array([self.address])}

    async def close(self) -> None:
        pass


@pytest.fixture
def fake_replicas(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeReplica]:
    FakeReplica.instances = {}
    monkeypatch.setattr(replica_set_module, "TritonBackend", FakeReplica)
    return FakeReplica.instances


def calls_with_b_failing(failure: Exception, calls: int) -> tuple[list[Any], dict[str, int]]:
    """`calls` calls through a pool over A and B, B failing each with `failure`: each call's answering
    replica (or the exception the robot got), and how many calls each replica saw."""
    async def scenario() -> list[Any]:
        pool = ReplicaPool(f"{A},{B}", timeout_s=5, check_interval_s=3600, resolve_interval_s=3600)
        await pool.start()
        try:
            FakeReplica.instances[B].failure = failure
            outcomes: list[Any] = []
            for i in range(calls):
                try:
                    outputs = await pool.infer(POLICY, {}, f"r{i}")
                    outcomes.append(str(outputs["replica"][0]))
                except BackendUnavailable as error:
                    outcomes.append(error)
            return outcomes
        finally:
            await pool.close()

    outcomes = asyncio.run(asyncio.wait_for(scenario(), 30))
    return outcomes, {address: replica.calls for address, replica in FakeReplica.instances.items()}


def test_a_call_a_dead_replica_did_not_take_is_answered_by_the_other(fake_replicas):
    outcomes, calls = calls_with_b_failing(BackendUnavailable("connection refused", unreachable=True), 4)
    assert outcomes == [A] * 4  # the robot never sees the dead replica
    assert calls[B] == 1  # found unreachable once, then out of the pool until a check finds it ready


def test_a_timed_out_call_is_not_retried_and_the_robot_is_told(fake_replicas):
    timeout = BackendUnavailable("policy backend unavailable (StatusCode.DEADLINE_EXCEEDED)", timed_out=True)
    outcomes, calls = calls_with_b_failing(timeout, 4)
    told = [outcome for outcome in outcomes if isinstance(outcome, BackendUnavailable)]
    assert told and all(error is timeout for error in told)
    assert calls[B] == len(told)  # each of B's timed-out calls ran once, on B only
    assert calls[A] == len(outcomes) - len(told)
