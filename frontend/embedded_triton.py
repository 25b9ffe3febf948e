"""Start and stop the tritonserver that NVIDIA ships in the `nvidia-pytriton` wheel (Triton 2.51).

Used by `openpi-triton serve` (no --triton-url) and by the integration tests. The server runs the
CPU configuration of every model (`--model-config-name=cpu`), its python models import this
project's packages, and it dies with its parent: nothing is left behind after a crash or kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install it with `pip install nvidia-pytriton==0.7.0` (or run `make serve`, which does)"


class EmbeddedTritonError(RuntimeError):
    """Tritonserver could not be found, placed or started; the message says what to do."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's tritonserver lives, and what it needs around it."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def libraries(self) -> list[Path]:
        stubs = self.root / "python_backend_stubs"
        return [stubs / "nvidia_pytriton.libs", self.root.parent / "nvidia_pytriton.libs", self.root / "lib"]


def find_triton() -> TritonInstall:
    """Locate tritonserver inside the installed `nvidia-pytriton` wheel."""
    try:
        import pytriton
    except ImportError:
        raise EmbeddedTritonError(
            f"tritonserver not found: the nvidia-pytriton wheel is not installed; {INSTALL_HINT}"
        ) from None
    install = TritonInstall(Path(pytriton.__file__).parent / "tritonserver")
    if not install.binary.is_file():
        raise EmbeddedTritonError(f"tritonserver not found at {install.binary}; reinstall it: {INSTALL_HINT}")
    return install


def place_python_stub(install: TritonInstall) -> Path:
    """Copy the python-backend stub built for this interpreter to where tritonserver looks for it."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = install.root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not source.is_file():
        raise EmbeddedTritonError(
            f"the nvidia-pytriton wheel has no python-backend stub for Python {version} "
            f"(looked for {source}); use Python 3.8-3.13"
        )
    target = install.backends / "python" / "triton_python_backend_stub"
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return target
    # Copy then rename, so a concurrent start never sees a half-written stub.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        shutil.copyfile(source, tmp.name)
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, target)
    return target


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A port nothing listens on right now (for tests and ephemeral servers), never the same one twice in
    this process: the kernel can offer a port it has just offered again, and a tritonserver given one
    port for both gRPC and metrics refuses to start."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port


# Sets PR_SET_PDEATHSIG (1), which survives exec, then becomes the command. Exits instead when the
# parent (argv[1]) died before the signal was armed.
_DIE_WITH_PARENT_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, wrapped so that the kernel sends it SIGTERM when this process dies, however it dies
    (kill -9 included). Tritonserver then stops its python stubs itself.

    A small shim arms the signal and execs the command. Arming it in a `preexec_fn` instead makes
    Popen fork with gRPC's fork handlers in place: with gRPC threads busy in this process, about one
    child in fifty aborted (SIGABRT in gRPC's event engine) before it ever ran the command.
    """
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT_SHIM, str(os.getpid()), *command]


def _stub_environment(install: TritonInstall) -> dict[str, str]:
    """The environment for tritonserver and the python stubs it spawns.

    The stub embeds CPython in isolated mode (PYTHONPATH is ignored) and derives its prefix from the
    first `python3` on PATH; putting this interpreter's bin/ first makes the stub use this virtual
    environment's site-packages, where the project and its dependencies are installed.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [str(p) for p in install.libraries if p.is_dir()] + [sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, env.get("LD_LIBRARY_PATH", "")]))
    return env


@dataclass
class EmbeddedTriton:
    """A tritonserver child process on the CPU configuration of one or more model repositories."""

    model_repositories: Sequence[Path]
    http_port: int = 8010
    grpc_port: int = 8011
    metrics_port: int = 8012
    host: str = "127.0.0.1"
    model_config_name: str = "cpu"
    log_verbose: int = 0
    startup_timeout_s: float = 180.0
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self, install: TritonInstall) -> list[str]:
        args = [str(install.binary)]
        args += [f"--model-repository={Path(repo).resolve()}" for repo in self.model_repositories]
        args += [
            f"--model-config-name={self.model_config_name}",
            f"--backend-directory={install.backends}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]
        return args

    def start(self) -> EmbeddedTriton:
        for repo in self.model_repositories:
            if not Path(repo).is_dir():
                raise EmbeddedTritonError(f"model repository {repo} does not exist")
        taken = [
            f"{name} port {port}"
            for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port))
            if not port_is_free(port, self.host)
        ]
        if taken:
            raise EmbeddedTritonError(
                f"cannot start tritonserver: {', '.join(taken)} already in use on {self.host}; "
                "stop whatever listens there or choose other ports (--triton-http-port/--triton-grpc-port/"
                "--triton-metrics-port)"
            )
        install = find_triton()
        place_python_stub(install)

        env = _stub_environment(install)
        with tempfile.NamedTemporaryFile(prefix="tritonserver-", suffix=".log", delete=False) as log:
            self.log_path = Path(log.name)
            self.process = subprocess.Popen(
                die_with_parent(self.command(install)), stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedTritonError(
                    f"tritonserver exited with code {self.process.returncode} during start-up. "
                    f"Last lines of its log ({self.log_path}):\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise EmbeddedTritonError(
            f"tritonserver was not ready after {self.startup_timeout_s:.0f} s. "
            f"Last lines of its log ({self.log_path}):\n{self.log_tail()}"
        )

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (SIGTERM: Triton unloads models and ends its stubs), then SIGKILL the group."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The log is only kept when start-up failed (the error message points at it).
        if process is not None and process.returncode == 0 and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_triton(model_repositories: Sequence[Path], **options: object) -> Iterator[EmbeddedTriton]:
    server = EmbeddedTriton(list(model_repositories), **options)  # type: ignore[arg-type]
    with server:
        yield server
