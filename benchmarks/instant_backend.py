"""`InstantBackend`: a `Backend` that answers every call at once, for the front's own cost (the overhead
benchmark's `front` layer) and for tests of the front without Triton. Its policies are read from model
repositories as Triton would serve them; its answers are each output filled with one value (zeros, or NaN
to test the guard), shaped as the model declares it and with the request's rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from openpi_triton.triton.backend import SequenceFlags
from openpi_triton.triton.policy import Policy
from openpi_triton.triton.repository import policy_from_repository, read_model_config
from openpi_triton.triton.tensors import TRITON_DTYPES, triton_datatype


class InstantBackend:
    """`policies`: (model repository, policy name) pairs."""

    def __init__(self, policies: Iterable[tuple[Path, str]], fill: float = 0.0) -> None:
        self.fill = fill
        self._policies: dict[str, Policy] = {}
        self._outputs: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]] = {}
        for repository, name in policies:
            self._policies[name] = policy_from_repository(repository, name)
            config = read_model_config(Path(repository) / name / "config.pbtxt")
            self._outputs[name] = {o["name"]: (tuple(max(int(d), 1) for d in o.get("dims", [])),
                                               TRITON_DTYPES[triton_datatype(o["data_type"])])
                                   for o in config.get("output", [])}
        self.config_errors: dict[str, str] = {}
        self.closed = False

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    async def discover(self, force: bool = False) -> dict[str, Policy]:
        return self.policies

    async def policy(self, name: str) -> Policy | None:
        return self._policies.get(name)

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        unknown = [name for name in names if name not in self._policies]
        return (False, f"unknown policies {unknown}") if unknown else (True, "ready")

    async def infer(self, policy: Policy, tensors: Mapping[str, np.ndarray], request_id: str,
                    sequence: SequenceFlags | None = None) -> dict[str, np.ndarray]:
        rows = [len(next(iter(tensors.values())))] if policy.batched else []
        return {name: np.full((*rows, *shape), self.fill, dtype)
                for name, (shape, dtype) in self._outputs[policy.name].items()}

    async def close(self) -> None:
        self.closed = True
