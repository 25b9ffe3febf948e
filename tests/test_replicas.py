"""One front over two real tritonservers: routing, failover, replicas that come and go.

The session's tritonserver (`triton`) is replica A, its second one (`second_triton`) replica B, which
these tests kill under load and start again. Robots are stock openpi_client robots. Waits are bounded;
nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openpi_triton.config import Settings
from openpi_triton.front.observations import observation_to_tensors
from openpi_triton.process import free_port
from openpi_triton.triton.addresses import AddressError, Target, parse_targets, resolve
from openpi_triton.triton.backend import BackendUnavailable, SequenceFlags, SequenceLost
from openpi_triton.triton.embedded import EmbeddedTriton
from openpi_triton.triton.replicas import ReplicaPool

from .conftest import http_get, running_front
from .robots import COUNTER, fleet
from .waiting import wait_until, wait_until_async

# --- --triton-url ---------------------------------------------------------------------------------


def test_triton_url_lists_addresses_and_names():
    assert parse_targets("triton:8001") == (Target("triton", 8001),)
    assert parse_targets(" 10.0.0.5:9001, triton ,[::1]:8001,10.0.0.5:9001") == (
        Target("10.0.0.5", 9001), Target("triton", 8001), Target("::1", 8001))
    assert [t.literal for t in parse_targets("10.0.0.5:1,[::1]:2,openpi-triton:3")] == [True, True, False]
    assert str(Target("::1", 8001)) == "[::1]:8001"


@pytest.mark.parametrize(("url", "says"), [
    ("", "no Triton address"),
    ("a:8001,,b:8001", "empty entry"),
    ("grpc://triton:8001", "without a scheme"),
    ("triton:http", "must be a number"),
    ("triton:70000", "must be a number"),
    ("::1:8001", "in brackets"),
    (":8001", "no host"),
])
def test_a_wrong_triton_url_says_which_entry_and_why(url, says):
    with pytest.raises(AddressError, match=says):
        parse_targets(url)


def test_a_name_resolves_to_its_addresses_and_an_address_to_itself():
    assert asyncio.run(resolve(Target("localhost", 8001))) == ["127.0.0.1:8001"]
    assert asyncio.run(resolve(Target("10.1.2.3", 8001))) == ["10.1.2.3:8001"]


# --- two replicas under a front ---------------------------------------------------------------------


def replica_requests(base: str, replica: str, outcome: str = "ok") -> float:
    text = http_get(base, "/metrics")[1]
    pattern = rf'^openpi_triton_replica_requests_total\{{outcome="{outcome}",replica="{re.escape(replica)}"\}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def inferences(server: EmbeddedTriton, model: str) -> int:
    """What `server` itself counts (0 while it cannot be asked)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return int(client.get_inference_statistics(model).model_stats[0].inference_count)
    except InferenceServerException:
        return 0
    finally:
        client.close()


def timed_out(text: str) -> bool:
    """A call that got no answer within --triton-timeout: on two loaded cores that can happen to any call,
    and the pool does not retry it (it may have run), so the robot is told."""
    return "DEADLINE_EXCEEDED" in text or "Deadline" in text


def steps_restart_after_each_notice(events: list[tuple[float, str, str]]) -> bool:
    """A stateful robot's answers count 1, 2, 3, ... and start again at 1 right after a notice (after a
    timed-out call the count goes on from wherever that call left it)."""
    expected = None
    for _, kind, text in events:
        if kind == "error":
            expected = None if timed_out(text) else 1
        elif expected is not None and int(text) != expected:
            return False
        else:
            expected = int(text) + 1
    return True


@pytest.mark.integration
def test_sixteen_robots_over_two_replicas_lose_one_and_get_it_back(triton, second_triton):
    a, b = triton.grpc_url, second_triton.grpc_url
    settings = Settings(triton_url=f"{a},{b}", port=free_port(), host="127.0.0.1", triton_shared_memory=True)
    with running_front(settings) as url:
        address = url.removeprefix("ws://")
        assert "2 of 2 Triton replicas ready" in http_get(url, "/readyz")[1]
        # Stateful robots first, onto an idle front: the first session to start goes to A, the second to B
        # (the fewest calls in flight, equals taking turns).
        with fleet(address, {COUNTER: 4}) as stateful, fleet(address, {"libero": 8, "droid": 4}) as stateless:
            wait_until(lambda: replica_requests(url, a) > 20 and replica_requests(url, b) > 20,
                       "both replicas take requests", 60)
            killed_at = time.monotonic()
            os.kill(second_triton.pid, signal.SIGKILL)

            def served_after_kill(count: int) -> Callable[[], bool]:
                return lambda: all(len([e for e in r.after(killed_at) if e[1] == "ok"]) >= count
                                   for r in stateful + stateless)

            wait_until(served_after_kill(5), "every robot keeps getting answers after replica B died", 60)
            # /readyz answers from state refreshed every second: it says so within a few seconds.
            wait_until(lambda: (lambda status, body: status == 200 and "1 of 2 Triton replicas ready" in body
                                and f"replica {b}: " in body)(*http_get(url, "/readyz")), "/readyz names B as down", 30)

            second_triton.stop()  # what was left of it: its python stubs, its shared memory
            second_triton.start()
            restarted_at = time.monotonic()
            before = replica_requests(url, b)
            wait_until(lambda: replica_requests(url, b) > before and inferences(second_triton, "libero") > 0,
                       "the restarted replica B takes requests again", 60)
            wait_until(lambda: http_get(url, "/readyz")[1].startswith("2 of 2 Triton replicas ready"),
                       "/readyz counts B again", 30)
            wait_until(served_after_kill(10), "every robot still gets answers", 60)

    # What went wrong, for the failure message: each robot's first errors, in seconds after the kill.
    seen = {f"{r.policy} {i}": [(round(at - killed_at, 2), kind, text[-80:]) for at, kind, text in r.events
                                if kind != "ok"][:3] for i, r in enumerate(stateful + stateless)}
    seen["B ready again at"] = round(restarted_at - killed_at, 2)
    # The calls replica B had when it died were retried on A (tests/test_replica_routing.py has the exact
    # rule): a stateless robot saw no error but, on a loaded machine, a call that timed out.
    for r in stateless:
        problems = [(kind, text) for _, kind, text in r.events if kind != "ok" and not timed_out(text)]
        assert not problems, f"a stateless {r.policy} robot was not answered; all robots: {seen}"
    notices = 0
    for r in stateful:
        errors = [text for _, kind, text in r.events if kind != "ok" and not timed_out(text)]
        assert len(errors) <= 1 and all("lost this session's state" in text and b in text for text in errors), errors
        assert steps_restart_after_each_notice(r.events), r.events
        notices += len(errors)
    # The second session started on replica B (the first took A): at least that robot was told.
    assert notices >= 1


# --- replicas from DNS ------------------------------------------------------------------------------


@pytest.mark.integration
def test_replicas_follow_the_addresses_a_name_resolves_to(triton, second_triton):
    """A headless Service's records change as Triton pods come and go (here a stand-in resolver: this
    machine has no DNS server to change; the replicas behind the addresses are real)."""
    a, b = triton.grpc_url, second_triton.grpc_url
    records: list[str] = [a]
    calls: list[tuple[str, str]] = []

    async def records_now(target: Target) -> list[str]:
        assert target == Target("triton.robots.svc", 8001)
        return list(records)

    async def scenario() -> None:
        pool = ReplicaPool("triton.robots.svc:8001", timeout_s=5, resolve_interval_s=0.2, check_interval_s=0.1,
                           resolver=records_now)
        pool.on_call = lambda replica, outcome, seconds: calls.append((replica, outcome))
        await pool.start()
        try:
            policy = await pool.policy(COUNTER)
            assert policy is not None and policy.stateful
            tensors = observation_to_tensors(policy, {"inputs/x": np.zeros(1, np.float32)}, None)

            async def step(sequence: int, start: bool = False, end: bool = False) -> int:
                outputs = await pool.infer(policy, tensors, "r", SequenceFlags(sequence, start=start, end=end))
                return int(outputs["step"][0][0])

            assert [await step(1, start=True), await step(1)] == [1, 2]
            assert {replica for replica, _ in calls} == {a}

            records.append(b)  # a pod became ready
            await wait_until_async(lambda: [r.ready for r in pool.replicas()] == [True, True], "replica B joins")
            calls.clear()
            for sequence in range(2, 6):  # new sessions spread over both
                await step(sequence, start=True)
            assert {replica for replica, _ in calls} == {a, b}
            for sequence in range(2, 6):
                assert await step(sequence, end=True) == 2
            assert await step(1) == 3  # and the first session stays where its state is

            records.remove(a)  # A's pod went away
            await wait_until_async(lambda: [r.address for r in pool.replicas()] == [b], "replica A leaves")
            with pytest.raises(SequenceLost, match=f"{re.escape(a)}, went away: it is no longer among"):
                await step(1)
            assert await step(100, start=True) == 1  # the robot's next session starts on B
            assert await step(100, end=True) == 2

            records.clear()  # no ready pod: NXDOMAIN
            await wait_until_async(lambda: pool.replicas() == [], "no replica left")
            ready, reason = await pool.readiness([COUNTER])
            assert not ready and "triton.robots.svc:8001 resolves to no address" in reason
            with pytest.raises(BackendUnavailable, match="no Triton replica"):
                await step(101, start=True)
        finally:
            await pool.close()

    asyncio.run(scenario())
