"""Start and stop the tritonserver that NVIDIA ships in the `nvidia-pytriton` wheel (Triton 2.51).

Used by `openpi-triton serve` (no --triton-url, under `supervisor.TritonSupervisor`) and by the
integration tests. The server runs one configuration of every model (`--model-config-name`: `cpu` by
default, `gpu_torch` for the PyTorch policy core on a GPU), its python models import this project's
packages, and it dies with its parent. Stopping it, or cleaning up after it died, leaves nothing behind:
no process of its group (python-backend stubs included) and none of its python-backend shared-memory
regions.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from openpi_triton.config import CPU_CONFIG_NAME, TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT
from openpi_triton.process import Child, ChildFailed, command_line, group_members, port_is_free, url_answers

SHARED_MEMORY_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
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


def find_triton(root: Path | None = None) -> TritonInstall:
    """Locate tritonserver: in `root` (a directory laid out like the wheel's, with its libraries in lib/,
    such as the GPU host kit's, see benchmarks/gpu_kit.py) or inside the installed `nvidia-pytriton` wheel."""
    if root is not None:
        install = TritonInstall(Path(root))
        if not install.binary.is_file():
            raise EmbeddedTritonError(f"tritonserver not found at {install.binary} (--tritonserver {root})")
        return install
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
    """A tritonserver child process on one configuration (CPU by default) of one or more model repositories.

    It dies with its parent (kill -9 included), and then stops its python stubs itself."""

    model_repositories: Sequence[Path]
    http_port: int = TRITON_HTTP_PORT
    grpc_port: int = TRITON_GRPC_PORT
    metrics_port: int = TRITON_METRICS_PORT
    host: str = "127.0.0.1"
    model_config_name: str = CPU_CONFIG_NAME
    log_verbose: int = 0
    startup_timeout_s: float = 180.0
    # Explicit model control (every model loaded at start) is what lets a model be unloaded and loaded
    # again, the only way Triton 2.51 respawns a python stub that died.
    explicit_model_control: bool = True
    # How long tritonserver waits for models to unload on SIGTERM; past it, it exits anyway. Its default,
    # 30 s, is all spent waiting for a model whose stub is dead.
    exit_timeout_s: float = 5.0
    extra_args: Sequence[str] = ()
    # A tritonserver directory other than the nvidia-pytriton wheel's (`find_triton`).
    tritonserver: Path | None = None
    child: Child | None = field(default=None, init=False)
    # The python backend names its shared-memory regions <prefix><uuid>; a prefix of each server's own
    # tells its regions from those of any other tritonserver on the host.
    shm_prefix: str = field(default="", init=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

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
            f"--exit-timeout-secs={max(1, round(self.exit_timeout_s))}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.explicit_model_control:
            args += ["--model-control-mode=explicit", "--load-model=*"]
        return [*args, *self.extra_args]

    def start(self, cancelled: Callable[[], bool] | None = None) -> EmbeddedTriton:
        """Start and wait until every model is ready; `cancelled()` true aborts the wait (and the server)."""
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
        install = find_triton(self.tritonserver)
        place_python_stub(install)
        self.shm_prefix = f"tritonpb_{secrets.token_hex(6)}_"
        self.child = Child.start("tritonserver", self.command(install), env=_stub_environment(install))
        try:
            self.child.wait_ready(f"{self.http_url}/v2/health/ready", self.startup_timeout_s, cancelled)
        except ChildFailed as error:
            failures = load_failures(self.child.log_path)
            self.stop()
            raise EmbeddedTritonError("\n".join([str(error), *failures])) from None
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        return url_answers(f"{self.http_url}/v2/health/ready")

    def exited(self) -> bool:
        """tritonserver was started and has exited since (`stop` cleans up after it)."""
        return self.child is not None and self.child.exited()

    def shared_memory_regions(self) -> list[Path]:
        """This server's python-backend regions in /dev/shm (the front's own regions are not among them)."""
        return _regions(self.shm_prefix)

    def python_stubs(self) -> dict[int, str]:
        """The live python-backend stubs of this server: pid -> the model it runs."""
        return {} if self.child is None else python_stubs_of(self.child.pid)

    def reload_model(self, name: str, timeout_s: float = 120.0) -> None:
        """Unload `name` and load it again, which starts fresh python stubs for it.

        Loading a model that is already loaded does nothing when neither its files nor its config changed
        (measured on Triton 2.51: 2 ms, the dead stub stays dead), so it is unloaded first. Raises
        EmbeddedTritonError with Triton's reason."""
        model = urllib.parse.quote(name, safe="")
        for action in ("unload", "load"):
            request = urllib.request.Request(f"{self.http_url}/v2/repository/models/{model}/{action}", data=b"{}",
                                             method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s):
                    pass
            except urllib.error.HTTPError as error:
                raise EmbeddedTritonError(f"{action} of model {name!r} failed: {_triton_error(error)}") from None
            except (urllib.error.URLError, OSError) as error:
                raise EmbeddedTritonError(f"{action} of model {name!r} failed: {error}") from None

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful stop (SIGTERM: Triton unloads models and ends its stubs), then SIGKILL of whatever is
        left of its process group, then removal of its python-backend shared memory. Also the clean-up
        after a tritonserver that died. The log is kept only when tritonserver did not exit cleanly (the
        error message points at it)."""
        child, self.child = self.child, None
        if child is not None:
            child.stop(self.exit_timeout_s + 10 if timeout_s is None else timeout_s)
        # Only now: a stub that still ran could have been using them.
        for region in self.shared_memory_regions():
            region.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_stubs_of(tritonserver_pid: int) -> dict[int, str]:
    """The live python-backend stubs of any tritonserver started by `EmbeddedTriton` (its own process
    group): pid -> the model it runs, read from the stub's first argument,
    <repository>/<model>/<version>/model.py."""
    stubs = {}
    for pid in group_members(tritonserver_pid):
        argv = command_line(pid)
        if len(argv) >= 2 and argv[0].endswith(STUB_NAME) and len(Path(argv[1]).parts) >= 3:
            stubs[pid] = Path(argv[1]).parts[-3]
    return stubs


def shared_memory_regions_of(tritonserver_pid: int) -> list[Path]:
    """A running tritonserver's python-backend regions in /dev/shm, by the prefix on its command line."""
    prefix = next((arg.rsplit("=", 1)[1] for arg in command_line(tritonserver_pid)
                   if arg.startswith("--backend-config=python,shm-region-prefix-name=")), "")
    return _regions(prefix)


def _regions(prefix: str) -> list[Path]:
    return sorted(SHARED_MEMORY_DIR.glob(prefix + "*")) if prefix else []  # the prefix has no glob characters


def load_failures(log: Path) -> list[str]:
    """Why models failed to load, from a tritonserver log: a python model's exception (a LeRobot checkpoint
    refused, say) is in the middle of the log, far from the last lines a start-up error shows."""
    if not log.is_file():
        return []
    found = re.findall(r"\"failed to load '([^']+)' version \d+: (.*?)\"?$", log.read_text(errors="replace"), re.M)
    # Triton escapes the exception's newlines; its first line is the message, then comes the traceback.
    return [f"model {model!r} failed to load: {reason.split(chr(92) + 'n')[0][:2000]}" for model, reason in found]


def _triton_error(error: urllib.error.HTTPError) -> str:
    body = error.read().decode(errors="replace")
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body or str(error)
