"""System shared memory between the front and a Triton on the same host.

A request's large tensors (camera frames) are copied once into a region that Triton reads, instead of
being serialised into the gRPC message by the front and parsed out of it by Triton. Regions are
registered with Triton once and reused: each request in flight holds one, sized to a power of two of
at least 1 MiB, and a fixed budget (`config.SHARED_MEMORY_BUDGET_BYTES`) caps what the pool may hold
(past it, requests go inline).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

_ALREADY_REGISTERED = "already in manager"  # Triton's answer to registering a region name it holds
# Smaller tensors (state, prompt, seed) are cheaper inline than as a shared-memory reference.
LARGE_TENSOR_BYTES = 64 * 1024
MIN_REGION_BYTES = 1 << 20


@dataclass
class Region:
    """One shared-memory segment and Triton's name for it."""

    name: str
    memory: shared_memory.SharedMemory
    registered: bool = False

    @property
    def size(self) -> int:
        return self.memory.size

    def write(self, value: np.ndarray, offset: int) -> None:
        np.ndarray(value.shape, value.dtype, buffer=self.memory.buf, offset=offset)[...] = value


def large_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors worth passing through shared memory."""
    return {name: value for name, value in tensors.items()
            if value.dtype != object and value.nbytes >= LARGE_TENSOR_BYTES}


class SharedMemoryPool:
    """Regions registered with one Triton (through `client`, a tritonclient.grpc.aio client)."""

    def __init__(self, client: Any, budget_bytes: int) -> None:
        self._client = client
        self._budget = budget_bytes
        self._prefix = f"openpi_triton_{os.getpid()}_{secrets.token_hex(4)}"
        self._numbers = itertools.count()
        self._free: dict[int, list[Region]] = {}
        self._retired: list[Region] = []
        self._regions: list[Region] = []
        # Counts forget_registrations: the requests that failed on one restart of Triton forget once.
        self.generation = 0

    @property
    def held_bytes(self) -> int:
        return sum(region.size for region in self._regions)

    async def acquire(self, nbytes: int) -> Region | None:
        """A registered region of at least `nbytes` for one request, or None when the budget is spent."""
        size = max(MIN_REGION_BYTES, 1 << (nbytes - 1).bit_length())
        free = self._free.setdefault(size, [])
        if free:
            region = free.pop()
        elif self.held_bytes + size <= self._budget:
            name = f"{self._prefix}_{next(self._numbers)}"
            region = Region(name, shared_memory.SharedMemory(name=name, create=True, size=size))
            self._regions.append(region)
        else:
            return None
        if not region.registered:
            try:
                await self._client.register_system_shared_memory(region.name, "/" + region.memory.name, size)
            except InferenceServerException as error:
                # Registered with this Triton already (a request that failed on its restart forgot every
                # registration, this one's included, after it was made): the name is this pool's alone, so
                # Triton holds this very region.
                if _ALREADY_REGISTERED not in (error.message() or ""):
                    self.release(region)
                    raise
            except BaseException:
                self.release(region)
                raise
            region.registered = True
        return region

    def release(self, region: Region) -> None:
        """Triton answered the request that held `region`: the next request may use it."""
        self._free[region.size].append(region)

    def retire(self, region: Region) -> None:
        """The request that held `region` got no answer (timed out, connection lost): Triton may still
        read it, so it is not handed out again until Triton restarts."""
        self._retired.append(region)

    def forget_registrations(self, generation: int | None = None) -> None:
        """Triton restarted and forgot every region (and every request): register each again on its
        next use; retired regions are safe to reuse.

        `generation`: the pool's generation when the failed request was made. When another request has
        forgotten since, this one failed on the same restart: forgetting again would register regions
        twice with the new Triton ("already in manager"), and reuse regions retired since."""
        if generation is not None and generation != self.generation:
            return
        self.generation += 1
        for region in self._regions:
            region.registered = False
        for region in self._retired:
            self.release(region)
        self._retired.clear()

    async def close(self) -> None:
        for region in self._regions:
            # Unregistered whatever the flag says: a forget after a restart may have cleared it for a region
            # that the new Triton holds.
            with contextlib.suppress(Exception):  # Triton may already be gone, or not hold it
                await self._client.unregister_system_shared_memory(region.name)
            region.memory.close()
            with contextlib.suppress(FileNotFoundError):
                region.memory.unlink()
        self._regions.clear()
        self._free.clear()
        self._retired.clear()
