"""The servers a benchmark talks to, each in its own process: Triton (embedded unless a URL is given),
this project's front (`openpi-triton serve`, exactly as deployed) and OpenPI's reference server."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from openpi_triton.process import Child, free_port, running_child
from openpi_triton.triton.embedded import EmbeddedTriton


@contextlib.contextmanager
def front(triton_url: str, policy: str, shared_memory: bool, host: str = "127.0.0.1",
          extra_flags: tuple[str, ...] = ()) -> Iterator[tuple[str, Child]]:
    """`openpi-triton serve` on a free port against `triton_url`; yields (ws URL of `policy`, process).
    `shared_memory`: Triton runs on this host, so the front passes camera frames through /dev/shm, as
    `serve` does with its own tritonserver."""
    port = free_port()
    command = [sys.executable, "-m", "openpi_triton", "serve", "--triton-url", triton_url, "--host", host,
               "--port", str(port), "--default-policy", policy, "--log-level", "warning",
               "--max-connections", "4096", "--triton-shared-memory", "on" if shared_memory else "off",
               *extra_flags]
    with running_child("front", command, f"http://{host}:{port}/readyz") as process:
        yield f"ws://{host}:{port}/v1/realtime/robot/openpi/{policy}", process


@contextlib.contextmanager
def reference_server(model_repository: Path, policy: str,
                     host: str = "127.0.0.1") -> Iterator[tuple[str, Child]]:
    """OpenPI's WebsocketPolicyServer with the in-process reference policy; yields (ws URL, process)."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.reference_server", "--model-repository", str(model_repository),
               "--policy", policy, "--host", host, "--port", str(port)]
    with running_child("reference", command, f"http://{host}:{port}/healthz") as process:
        yield f"ws://{host}:{port}", process


@contextlib.contextmanager
def triton(triton_url: str | None, model_repository: Path) -> Iterator[tuple[str, int | None]]:
    """(gRPC URL, tritonserver pid or None): the given Triton, or an embedded one on free ports."""
    if triton_url:
        yield triton_url, None
        return
    with EmbeddedTriton([model_repository], http_port=free_port(), grpc_port=free_port(),
                        metrics_port=free_port()) as server:
        yield server.grpc_url, server.pid
