"""One Triton server as the front sees it: policy discovery, readiness and inference over gRPC (asyncio).

`TritonBackend` implements `backend.Backend` for one Triton server, and `replicas.ReplicaPool` routes over
several of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from openpi_triton.config import REDISCOVER_INTERVAL_S, SHARED_MEMORY_BUDGET_BYTES, TRITON_TIMEOUT_S
from openpi_triton.triton.backend import BackendRejected, BackendUnavailable, SequenceFlags, SequenceLost
from openpi_triton.triton.grpc_tensors import infer_input
from openpi_triton.triton.health import Health, unhealthy_stub_model
from openpi_triton.triton.policy import Policy, PolicyConfigError, is_policy, policy_from_config
from openpi_triton.triton.shared_memory import SharedMemoryPool, large_tensors

log = logging.getLogger("openpi_triton.backend")

# tritonclient drops its own defaults when channel_args are given, so the message limits are restated.
# Short reconnect backoff: when Triton restarts, the front serves again within a second or two.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Checks, readiness and discovery get a channel of their own (its own subchannels too): calls made while a
# Triton is down put their channel into reconnect backoff, and on the inference channel the first call after
# Triton is back would then fail at once. /readyz's background refresher makes such calls every second.
_CHECK_CHANNEL_ARGS = [*_CHANNEL_ARGS, ("grpc.use_local_subchannel_pool", 1)]
_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")
_FORGOTTEN_REGION = "Unable to find shared memory region"  # what Triton says after a restart
# What Triton answers while a model is being loaded, or the server is starting and has not loaded it yet:
# the model exists (the front discovered it), so these are outages, not the robot's fault.
_MODEL_MISSING = ("Request for unknown model", "is not found", "is not ready", "has no available")
# A request of a sequence Triton does not know: it restarted, or the model was reloaded, since the
# sequence started.
_SEQUENCE_UNKNOWN = "must specify the START flag"


def _no_answer(error: InferenceServerException) -> bool:
    return (error.status() or "") in _UNAVAILABLE or "Deadline" in (error.message() or "")


class TritonBackend:
    """`shared_memory`: pass camera frames to Triton through system shared memory (same host only)."""

    def __init__(self, url: str, timeout_s: float = TRITON_TIMEOUT_S, shared_memory: bool = False,
                 health: Health | None = None) -> None:
        self.url = url
        self.health = health if health is not None else Health()
        self.timeout_s = timeout_s
        self.shared_memory = shared_memory
        self._client: grpcclient.InferenceServerClient | None = None
        self._check_client: grpcclient.InferenceServerClient | None = None
        self._pool: SharedMemoryPool | None = None
        self._policies: dict[str, Policy] = {}
        self.config_errors: dict[str, str] = {}
        self._discovered_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:  # created lazily: grpc.aio binds to the running event loop
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        return self._client

    @property
    def check_client(self) -> grpcclient.InferenceServerClient:
        """The channel of every call but inference (checks, readiness, discovery): calls made while a Triton
        is down put their channel into reconnect backoff, and the first inference after Triton is back must
        not fail for it."""
        if self._check_client is None:
            self._check_client = grpcclient.InferenceServerClient(self.url, channel_args=_CHECK_CHANNEL_ARGS)
        return self._check_client

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        for client in (self._client, self._check_client):
            if client is not None:
                await client.close()
        self._client = self._check_client = None

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    async def discover(self, force: bool = False) -> dict[str, Policy]:
        """(Re)read the policies from Triton's ready models; rate-limited unless forced."""
        async with self._lock:
            if not force and time.monotonic() - self._discovered_at < REDISCOVER_INTERVAL_S:
                return self.policies
            self._discovered_at = time.monotonic()
            try:
                index = await self.check_client.get_model_repository_index(
                    as_json=True, client_timeout=self.timeout_s)
                found, errors = {}, {}
                for model in index.get("models", []):
                    if model.get("state") != "READY":
                        continue
                    config = (await self.check_client.get_model_config(
                        model["name"], as_json=True, client_timeout=self.timeout_s))["config"]
                    if not is_policy(config):
                        continue
                    try:
                        found[config["name"]] = policy_from_config(config)
                    except PolicyConfigError as error:
                        errors[config["name"]] = str(error)
                        log.error("skipping policy", extra={"policy": config["name"], "error": str(error)})
            except InferenceServerException as error:
                log.warning("policy discovery failed", extra={"error": str(error)})
                return self.policies
            self._policies, self.config_errors = found, errors
            return self.policies

    async def policy(self, name: str) -> Policy | None:
        if name not in self._policies:
            await self.discover()
        return self._policies.get(name)

    def problem(self, policy: Policy) -> str | None:
        """Why `policy` cannot serve now, as far as is known without asking Triton, or None."""
        return self.health.problem(policy.models)

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        """(ready, reason): Triton is up, and every named policy's models are loaded, ready and not known
        to be down (a dead python stub leaves its model READY in Triton 2.51). The reason names each
        policy that is not ready, and what is wrong with it."""
        outage = self.health.server_outage()
        if outage is not None:
            return False, f"Triton at {self.url} is down: {outage.describe()}"
        known = [f"policy {name!r} is not ready: {problem}" for name in names
                 if name in self._policies and (problem := self.problem(self._policies[name]))]
        if known:
            return False, "; ".join(known)
        server = await self._server_problem(self.check_client, self.timeout_s)
        if server is not None:
            return False, server
        try:
            if any(name not in self._policies for name in names):  # else is_model_ready below tells
                await self.discover()
            problems = []
            for name in names:
                if name not in self._policies:
                    reason = self.config_errors.get(name, "no such model with a policy_server_config parameter")
                    problems.append(f"policy {name!r} is not available: {reason}")
                elif not await self.check_client.is_model_ready(name, client_timeout=self.timeout_s):
                    problems.append(f"policy {name!r}: model not ready in Triton")
        except InferenceServerException as error:
            return False, f"Triton at {self.url} is unreachable: {error.message()}"
        return (False, "; ".join(problems)) if problems else (True, "ready")

    async def check(self, timeout_s: float) -> str | None:
        """Why this Triton cannot take calls now, or None: the background check of a replica, on a channel
        of its own."""
        return await self._server_problem(self.check_client, timeout_s)

    async def _server_problem(self, client: grpcclient.InferenceServerClient, timeout_s: float) -> str | None:
        """Unreachable, or not ready (with --strict-readiness, until every model is), or None."""
        try:
            if await client.is_server_ready(client_timeout=timeout_s):
                return None
            return f"Triton at {self.url} is not ready{await self._models_not_ready()}"
        except InferenceServerException as error:
            return f"Triton at {self.url} is unreachable: {error.message()}"

    async def _models_not_ready(self) -> str:
        """Which models keep a not-ready Triton from being ready (it is only ready when all of them are)."""
        with contextlib.suppress(InferenceServerException):
            index = await self.check_client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
            waiting = [f"{m['name']} ({m.get('state', 'UNKNOWN')})" for m in index.get("models", [])
                       if m.get("state") != "READY"]
            if waiting:
                return f" (models not ready: {', '.join(waiting)})"
        return ""

    async def infer(
        self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str, sequence: SequenceFlags | None = None,
    ) -> dict[str, np.ndarray]:
        if self.health.heals:  # a supervisor is restarting tritonserver or reloading a model: say so at once
            problem = self.problem(policy)
            if problem is not None:
                raise BackendUnavailable(f"policy backend unavailable (policy {policy.name!r}: {problem})")
        generation = self._pool.generation if self._pool is not None else 0
        try:
            outputs = await self._infer(policy, tensors, request_id, sequence)
        except BackendRejected as error:
            if self._pool is None or _FORGOTTEN_REGION not in str(error):
                raise
            self._pool.forget_registrations(generation)  # Triton restarted since the regions were registered
            outputs = await self._infer(policy, tensors, request_id, sequence)
        self.health.call_succeeded(policy.models)
        return outputs

    async def _infer(
        self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str, sequence: SequenceFlags | None,
    ) -> dict[str, np.ndarray]:
        region, answered, issued = None, False, time.monotonic()
        try:
            large = large_tensors(tensors) if self.shared_memory else {}
            if large:
                region = await self._shared_memory_pool().acquire(sum(v.nbytes for v in large.values()))
            inputs, offset = [], 0
            for name, value in tensors.items():
                if region is not None and name in large:
                    region.write(value, offset)
                    inputs.append(infer_input(name, value, (region.name, offset)))
                    offset += value.nbytes
                else:
                    inputs.append(infer_input(name, value))
            outputs = [grpcclient.InferRequestedOutput(name) for name in policy.outputs.values()]
            flags = {}
            if sequence is not None:
                flags = {"sequence_id": sequence.id, "sequence_start": sequence.start, "sequence_end": sequence.end}
            result = await self.client.infer(
                policy.name, inputs, outputs=outputs, request_id=request_id,
                client_timeout=self.timeout_s, **flags,
            )
            answered = True
        except InferenceServerException as error:
            answered = not _no_answer(error)  # Triton is done with the request's shared memory
            raise self._classify(policy, error, issued) from None
        finally:
            if region is not None and self._pool is not None:
                (self._pool.release if answered else self._pool.retire)(region)
        return {name: result.as_numpy(name) for name in policy.outputs.values()}

    def _classify(self, policy: Policy, error: InferenceServerException, issued: float) -> Exception:
        """A failed call as the robot should hear of it: the backend's fault (unavailable, with what is
        known about why), a lost sequence, or a rejection of this observation."""
        status, message = error.status() or "", error.message() or str(error)
        if _no_answer(error):
            timed_out = status == "StatusCode.DEADLINE_EXCEEDED" or "Deadline" in message
            return BackendUnavailable(f"policy backend unavailable ({status or 'no answer'}): {message}",
                                      unreachable=not timed_out, timed_out=timed_out)
        broken = unhealthy_stub_model(message)
        if broken is not None:
            self.health.call_failed(broken, "its python stub process is not healthy (it died)", issued)
        if broken is not None or any(marker in message for marker in _MODEL_MISSING):
            known = self.problem(policy)
            detail = f"policy {policy.name!r}: {known}" if known else message
            return BackendUnavailable(f"policy backend unavailable ({detail})")
        if _SEQUENCE_UNKNOWN in message:
            return SequenceLost("the policy backend restarted or reloaded the policy")
        return BackendRejected(message)

    def _shared_memory_pool(self) -> SharedMemoryPool:
        if self._pool is None:
            self._pool = SharedMemoryPool(self.client, SHARED_MEMORY_BUDGET_BYTES)
        return self._pool

