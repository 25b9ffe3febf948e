"""Readiness of the front (GET /readyz), answered from cached state: a background task asks the backend
about each policy (every READINESS_REFRESH_S, each answer bounded by READINESS_CHECK_TIMEOUT_S), and the
probe reads what it found, so it never waits on Triton (the Kubernetes probe gives up after a second).

A front is ready while it can serve its default policy: one other policy's outage does not take it out of
the Service, but the body names every policy (and replica) that is down. `/readyz?policy=NAME` tells one
policy's readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from openpi_triton import config
from openpi_triton.triton.backend import Backend

log = logging.getLogger("openpi_triton.front")


@dataclass(frozen=True)
class PolicyReadiness:
    ready: bool
    reason: str


NOT_CHECKED = PolicyReadiness(False, "not checked yet")


class Readiness:
    def __init__(self, backend: Backend, default_policy: str) -> None:
        self.backend, self.default_policy = backend, default_policy
        self._policies: dict[str, PolicyReadiness] = {}
        self._task: asyncio.Task[None] | None = None

    def names(self) -> list[str]:
        """The default policy first, then every other one the backend knows."""
        return [self.default_policy, *sorted(set(self.backend.policies) - {self.default_policy})]

    async def refresh(self) -> None:
        """Ask the backend about every policy at once, each answer bounded in time."""
        names = self.names()
        found = await asyncio.gather(*(self._check(name) for name in names))
        self._policies = dict(zip(names, found, strict=True))

    async def _check(self, name: str) -> PolicyReadiness:
        timeout = config.READINESS_CHECK_TIMEOUT_S
        try:
            ready, reason = await asyncio.wait_for(self.backend.readiness([name]), timeout)
        except asyncio.TimeoutError:
            return PolicyReadiness(False, f"policy {name!r}: the readiness check got no answer within {timeout:g} s")
        except Exception as error:  # a check that fails says so; the refresher carries on
            log.exception("readiness check failed", extra={"policy": name})
            return PolicyReadiness(False, f"policy {name!r}: the readiness check failed ({type(error).__name__})")
        return PolicyReadiness(ready, reason)

    async def start(self) -> None:
        """One round now, each check bounded (a front is ready as soon as it serves), then in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="readiness")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(config.READINESS_REFRESH_S)
            try:
                await self.refresh()
            except Exception:  # the refresher must outlive whatever went wrong this round
                log.exception("readiness refresh failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def of(self, name: str) -> PolicyReadiness:
        return self._policies.get(name, NOT_CHECKED)

    def front(self) -> PolicyReadiness:
        """Ready while the default policy is; the reason names every policy that is not."""
        default = self.of(self.default_policy)
        lines = [default.reason]
        for name, state in sorted(self._policies.items()):
            if name != self.default_policy and not state.ready:
                named = state.reason.startswith(f"policy {name!r}")
                lines.append(state.reason if named else f"policy {name!r} is not ready: {state.reason}")
        return PolicyReadiness(default.ready, "\n".join(lines))
