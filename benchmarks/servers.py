"""The servers a benchmark talks to, each in its own process: Triton (embedded unless a URL is given),
this project's front (`openpi-triton serve`, exactly as deployed) and OpenPI's reference server."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from frontend.embedded_triton import EmbeddedTriton, die_with_parent, free_port


def _answers(url: str) -> bool:
    try:
        if url.startswith("tcp://"):
            host, port = url.removeprefix("tcp://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@dataclass
class ServerProcess:
    """A child process that is up once `ready_url` answers 200."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, ready_url: str, timeout_s: float) -> None:
        """Until `ready_url` answers 200, or for a "tcp://host:port" URL, until the port accepts."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if _answers(ready_url):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready at {ready_url} after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def server_process(name: str, command: Sequence[str], ready_url: str,
                   timeout_s: float = 120.0) -> Iterator[ServerProcess]:
    with tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(die_with_parent(command), stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(name, process, Path(log.name))
    try:
        server.wait_ready(ready_url, timeout_s)
        yield server
    finally:
        server.stop()
    server.log_path.unlink(missing_ok=True)  # kept only when something went wrong


@contextlib.contextmanager
def front(triton_url: str, policy: str, shared_memory: bool,
          host: str = "127.0.0.1") -> Iterator[tuple[str, ServerProcess]]:
    """`openpi-triton serve` on a free port against `triton_url`; yields (ws URL of `policy`, process).
    `shared_memory`: Triton runs on this host, so the front passes camera frames through /dev/shm, as
    `serve` does with its own tritonserver."""
    port = free_port()
    command = [sys.executable, "-m", "frontend", "serve", "--triton-url", triton_url, "--host", host,
               "--port", str(port), "--default-policy", policy, "--log-level", "warning",
               "--max-connections", "4096", "--triton-shared-memory", "on" if shared_memory else "off"]
    with server_process("front", command, f"http://{host}:{port}/readyz") as process:
        yield f"ws://{host}:{port}/v1/realtime/robot/openpi/{policy}", process


@contextlib.contextmanager
def reference_server(model_repository: Path, policy: str,
                     host: str = "127.0.0.1") -> Iterator[tuple[str, ServerProcess]]:
    """OpenPI's WebsocketPolicyServer with the in-process reference policy; yields (ws URL, process)."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.reference_server", "--model-repository", str(model_repository),
               "--policy", policy, "--host", host, "--port", str(port)]
    with server_process("reference", command, f"http://{host}:{port}/healthz") as process:
        yield f"ws://{host}:{port}", process


@contextlib.contextmanager
def triton(triton_url: str | None, model_repository: Path) -> Iterator[tuple[str, int | None]]:
    """(gRPC URL, tritonserver pid or None): the given Triton, or an embedded one on free ports."""
    if triton_url:
        yield triton_url, None
        return
    server = EmbeddedTriton([model_repository], http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    with server:
        assert server.process is not None
        yield server.grpc_url, server.process.pid
