"""Discovery and health of the front's Triton replicas: one `TritonBackend` per address that --triton-url
names or resolves to, watched in the background; the policies they serve and their readiness.

- Names are re-resolved every `resolve_interval_s`; each replica's readiness is checked every
  `check_interval_s`. A replica whose address is gone is retired: its sessions move (see `affinity`), its
  channel closes once its calls are done, and `on_leave` is told (the front drops its metric series).
- One IP address (the embedded tritonserver, or any single Triton) is one replica for good, sharing the
  caller's `Health`: its calls, errors and /readyz read as they did before there were replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from openpi_triton.config import REPLICA_CHECK_FAILURES_DOWN, REPLICA_CHECK_TIMEOUT_S
from openpi_triton.triton.addresses import Target, parse_targets, resolve
from openpi_triton.triton.backend import ReplicaStatus
from openpi_triton.triton.client import TritonBackend
from openpi_triton.triton.health import Health
from openpi_triton.triton.policy import Policy

log = logging.getLogger("openpi_triton.replicas")

Resolver = Callable[[Target], Awaitable["list[str] | None"]]


@dataclass
class Replica:
    address: str
    backend: TritonBackend
    ready: bool = False
    problem: str = "not checked yet"
    down_since: float = field(default_factory=time.monotonic)
    failed_at: float = float("-inf")  # the last call that found it unreachable
    failed_checks: int = 0  # in a row
    outstanding: int = 0
    retired: str = ""  # why it left the pool; its sessions move, its channel closes once idle

    def set_problem(self, problem: str | None) -> None:
        if problem is None and not self.ready:
            log.info("Triton replica ready", extra={"replica": self.address})
        elif problem is not None and self.ready:
            log.error("Triton replica down", extra={"replica": self.address, "reason": problem})
            self.down_since = time.monotonic()
        self.ready, self.problem = problem is None, problem or "ready"

    def serves(self, policy: Policy) -> bool:
        return policy.name in self.backend.policies


class ReplicaSet:
    """`url`: --triton-url (one or more host:port, comma-separated). `health`: the supervisor's, shared
    when `url` is one IP address; every other replica keeps its own."""

    def __init__(self, url: str, timeout_s: float, shared_memory: bool, health: Health | None,
                 resolve_interval_s: float, check_interval_s: float, resolver: Resolver = resolve) -> None:
        self.targets = parse_targets(url)
        self.timeout_s, self.shared_memory = timeout_s, shared_memory
        self.resolve_interval_s, self.check_interval_s = resolve_interval_s, check_interval_s
        self.health = health if health is not None else Health()
        self.single = len(self.targets) == 1 and self.targets[0].literal
        self.config_errors: dict[str, str] = {}
        # Told the address of each replica that left for good (its last call done, its channel closed).
        self.on_leave: Callable[[str], None] | None = None
        self._resolver = resolver
        self._resolved: dict[Target, list[str]] = {t: [str(t)] for t in self.targets if t.literal}
        self._dns_problems: dict[Target, str] = {}
        self._replicas: dict[str, Replica] = {}
        self._retired: list[Replica] = []
        self._policies: dict[str, Policy] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._update_replicas()  # IP addresses need no DNS: usable before start()

    async def start(self) -> None:
        """Resolve the names, check every replica, then keep doing both in the background."""
        await self._resolve()
        await self._check_all()
        self._watcher = asyncio.create_task(self._watch(), name="triton-replicas")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for replica in [*self._replicas.values(), *self._retired]:
            await replica.backend.close()
        self._replicas.clear()
        self._retired.clear()

    def replicas(self) -> list[ReplicaStatus]:
        return [ReplicaStatus(r.address, r.ready, r.outstanding, r.problem) for r in self._replicas.values()]

    async def _watch(self) -> None:
        next_resolve = time.monotonic() + self.resolve_interval_s
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                if time.monotonic() >= next_resolve:
                    next_resolve = time.monotonic() + self.resolve_interval_s
                    await self._resolve()
                await self._check_all()
                await self._close_idle_retired()
            except Exception:  # the watch must outlive whatever went wrong this round
                log.exception("Triton replica watch round failed")

    async def _close_idle_retired(self) -> None:
        for replica in [r for r in self._retired if r.outstanding == 0]:
            self._retired.remove(replica)
            await replica.backend.close()
            if self.on_leave is not None and replica.address not in self._replicas:
                self.on_leave(replica.address)

    async def _resolve(self) -> None:
        for target in self.targets:
            if target.literal:
                continue
            found = await self._resolver(target)
            if found is None:
                log.warning("DNS did not answer; keeping the known addresses", extra={"target": str(target)})
                continue
            if found:
                self._dns_problems.pop(target, None)
            else:
                self._dns_problems[target] = f"{target} resolves to no address (no ready Triton behind it?)"
            if found != self._resolved.get(target):
                log.info("Triton addresses", extra={"target": str(target), "addresses": found})
            self._resolved[target] = found
        self._update_replicas()

    def _update_replicas(self) -> None:
        wanted = dict.fromkeys(address for target in self.targets for address in self._resolved.get(target, []))
        for address in wanted:
            if address not in self._replicas:
                health = self.health if self.single else Health()
                backend = TritonBackend(address, self.timeout_s, self.shared_memory, health=health)
                self._replicas[address] = Replica(address, backend)
        for address in [a for a in self._replicas if a not in wanted]:
            replica = self._replicas.pop(address)
            replica.retired = f"it is no longer among the addresses of {', '.join(map(str, self.targets))}"
            replica.ready = False
            log.warning("Triton replica removed", extra={"replica": address, "reason": replica.retired})
            self._retired.append(replica)

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(replica) for replica in list(self._replicas.values())))

    async def _check(self, replica: Replica) -> None:
        started = time.monotonic()
        problem = await replica.backend.check(min(self.timeout_s, REPLICA_CHECK_TIMEOUT_S))
        if problem is None and not replica.ready:
            await replica.backend.discover(force=True)  # a new or restarted Triton: what does it serve?
            self._merge_policies()
        replica.failed_checks = 0 if problem is None else replica.failed_checks + 1
        # A call that found it unreachable after this check began knows better than the check.
        if replica.retired or replica.failed_at >= started:
            return
        if problem is None or not replica.ready or replica.failed_checks >= REPLICA_CHECK_FAILURES_DOWN:
            replica.set_problem(problem)

    # --- policies and readiness ---------------------------------------------------------------------

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    async def discover(self, force: bool = False) -> dict[str, Policy]:
        replicas = [r for r in self._replicas.values() if r.ready] or list(self._replicas.values())
        await asyncio.gather(*(replica.backend.discover(force) for replica in replicas))
        self._merge_policies()
        return self.policies

    def _merge_policies(self) -> None:
        """Every policy some replica serves (replicas are meant to serve one model repository)."""
        policies: dict[str, Policy] = {}
        errors: dict[str, str] = {}
        for replica in self._replicas.values():
            for name, policy in replica.backend.policies.items():
                policies.setdefault(name, policy)
            for name, error in replica.backend.config_errors.items():
                errors.setdefault(name, error)
        self._policies = policies
        self.config_errors = {name: error for name, error in errors.items() if name not in policies}

    async def policy(self, name: str) -> Policy | None:
        if name not in self._policies:
            await self.discover()
        return self._policies.get(name)

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        """Ready when one replica is ready for every policy; the reason names every replica."""
        replicas = list(self._replicas.values())
        if self.single:
            return await replicas[0].backend.readiness(names)
        dns = list(self._dns_problems.values())
        if not replicas:
            return False, "no Triton replica: " + "; ".join(dns or ["no address resolved yet"])

        async def one(replica: Replica) -> tuple[bool, str]:
            if not replica.ready:  # known down: no call that could hang on an unreachable address
                return False, replica.problem
            return await replica.backend.readiness(names)

        results = await asyncio.gather(*(one(replica) for replica in replicas))
        ready = sum(ok for ok, _ in results)
        lines = [f"{ready} of {len(replicas)} Triton replicas ready",
                 *(f"replica {r.address}: {reason}" for r, (_, reason) in zip(replicas, results, strict=True)),
                 *dns]
        return ready > 0, "\n".join(lines)
