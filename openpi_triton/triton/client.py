"""The front's one connection to Triton: policy discovery, readiness and inference over gRPC (asyncio).

`Backend` is what the front needs from it; `TritonBackend` is the real one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from openpi_triton.triton.policy import Policy, PolicyConfigError, is_policy, policy_from_config
from openpi_triton.triton.shared_memory import SharedMemoryPool, large_tensors
from openpi_triton.triton.tensors import infer_input

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
_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")
_REDISCOVER_INTERVAL_S = 2.0
_FORGOTTEN_REGION = "Unable to find shared memory region"  # what Triton says after a restart


class BackendUnavailable(RuntimeError):
    """Triton cannot be reached or did not answer in time."""


class BackendRejected(RuntimeError):
    """Triton answered with an error for this request (bad tensor, model failure)."""


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


class TritonBackend:
    """`shared_memory`: pass camera frames to Triton through system shared memory (same host only)."""

    def __init__(self, url: str, timeout_s: float = 10.0, shared_memory: bool = False) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.shared_memory = shared_memory
        self._client: grpcclient.InferenceServerClient | None = None
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

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    async def discover(self, force: bool = False) -> dict[str, Policy]:
        """(Re)read the policies from Triton's ready models; rate-limited unless forced."""
        async with self._lock:
            if not force and time.monotonic() - self._discovered_at < _REDISCOVER_INTERVAL_S:
                return self.policies
            self._discovered_at = time.monotonic()
            try:
                index = await self.client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
                found, errors = {}, {}
                for model in index.get("models", []):
                    if model.get("state") != "READY":
                        continue
                    config = (await self.client.get_model_config(
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

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        """(ready, reason): Triton is up and every named policy's model is loaded and ready."""
        try:
            if not await self.client.is_server_ready(client_timeout=self.timeout_s):
                return False, f"Triton at {self.url} is not ready"
            await self.discover()
            for name in names:
                if name not in self._policies:
                    reason = self.config_errors.get(name, "no such model with a policy_server_config parameter")
                    return False, f"policy {name!r} is not available: {reason}"
                if not await self.client.is_model_ready(name, client_timeout=self.timeout_s):
                    return False, f"policy {name!r}: model not ready in Triton"
        except InferenceServerException as error:
            return False, f"Triton at {self.url} is unreachable: {error.message()}"
        return True, "ready"

    async def infer(
        self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str, sequence: SequenceFlags | None = None,
    ) -> dict[str, np.ndarray]:
        try:
            return await self._infer(policy, tensors, request_id, sequence)
        except BackendRejected as error:
            if self._pool is None or _FORGOTTEN_REGION not in str(error):
                raise
            self._pool.forget_registrations()  # Triton restarted since the regions were registered
            return await self._infer(policy, tensors, request_id, sequence)

    async def _infer(
        self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str, sequence: SequenceFlags | None,
    ) -> dict[str, np.ndarray]:
        region, answered = None, False
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
            status = error.status() or ""
            if status in _UNAVAILABLE or "Deadline" in (error.message() or ""):
                reason = f"{status or 'no answer'}): {error.message()}"
                raise BackendUnavailable(f"policy backend unavailable ({reason}") from None
            answered = True
            raise BackendRejected(error.message() or str(error)) from None
        finally:
            if region is not None and self._pool is not None:
                (self._pool.release if answered else self._pool.retire)(region)
        return {name: result.as_numpy(name) for name in policy.outputs.values()}

    def _shared_memory_pool(self) -> SharedMemoryPool:
        if self._pool is None:
            self._pool = SharedMemoryPool(self.client)
        return self._pool

