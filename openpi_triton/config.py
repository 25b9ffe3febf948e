"""Every setting and default of the server, once: the `Settings` dataclass, filled by the CLI from flags
or OPENPI_TRITON_* environment variables, and the defaults other layers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
ENV_PREFIX = "OPENPI_TRITON_"

DEFAULT_MODEL_REPOSITORY = Path("model_repository")
DEFAULT_POLICY = "libero"
# The policy GR00T clients get (their protocol names none): the repository's GR00T-shaped example.
DEFAULT_GR00T_POLICY = "so100"
GR00T_PORT = 5555  # GR00T's own default, for documentation and the load generator
# Triton's own defaults (its gRPC, metrics and HTTP ports), for the embedded tritonserver.
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
TRITON_HTTP_PORT = 8003
# The embedded tritonserver loads `configs/<name>.pbtxt` of every model that has one (`--model-config-name`):
# the CPU configuration by default, or the PyTorch policy core on a GPU (no TensorRT needed).
CPU_CONFIG_NAME = "cpu"
GPU_TORCH_CONFIG_NAME = "gpu_torch"


def env_var(flag: str) -> str:
    """The environment variable of a flag: `triton-url` -> OPENPI_TRITON_TRITON_URL."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def core_onnx_path(model_repository: Path) -> Path:
    """Where the policy core's ONNX lives in a model repository (exported, never committed)."""
    return Path(model_repository) / "policy_core" / "1" / "model.onnx"


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8000
    # None: start the embedded tritonserver (CPU) on the ports below. Else one or more host:port, comma-
    # separated; a name stands for every address it resolves to (a Kubernetes headless Service).
    triton_url: str | None = None
    # How often names in triton_url are resolved again (replicas come and go), and each replica checked.
    triton_resolve_interval_s: float = 5.0
    triton_check_interval_s: float = 1.0
    triton_grpc_port: int = TRITON_GRPC_PORT
    triton_metrics_port: int = TRITON_METRICS_PORT
    triton_http_port: int = TRITON_HTTP_PORT
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    # The config variant the embedded tritonserver loads (configs/<name>.pbtxt where a model has one).
    model_config_name: str = CPU_CONFIG_NAME
    # The embedded tritonserver's directory; None: the one in the nvidia-pytriton wheel.
    tritonserver: Path | None = None
    default_policy: str = DEFAULT_POLICY
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Four 480x640 RGB cameras are 3.7 MB; 16 MiB leaves room for more cameras and state.
    max_frame_bytes: int = 16 * MIB
    max_connections: int = 256
    # Long enough for a person to reset a scene between episodes without reconnecting.
    idle_timeout_s: float = 900.0
    triton_timeout_s: float = 10.0
    # Camera frames reach Triton through system shared memory: only when both run on one host.
    triton_shared_memory: bool = False
    # On shutdown, how long robots' in-flight inferences may take to be answered before connections close.
    drain_timeout_s: float = 20.0
    # Embedded tritonserver restarts: the first retry waits this long, each next one twice as long.
    triton_restart_delay_s: float = 1.0
    triton_restart_max_delay_s: float = 30.0
    log_level: str = "info"
    # GR00T clients (ZeroMQ): off unless a port is set.
    gr00t_port: int | None = None
    gr00t_policy: str = DEFAULT_GR00T_POLICY
    gr00t_allow_kill: bool = False  # GR00T's `kill` endpoint stops the whole server when allowed
    gr00t_modality_form: str = "n1.6"  # ModalityConfig as N1.5 or N1.6 clients read it

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


def read_api_keys(inline: str | None, file: Path | None) -> tuple[str, ...]:
    """Keys from a comma-separated string and/or a file with one key per line (# comments allowed)."""
    keys = [key.strip() for key in (inline or "").split(",")]
    if file is not None:
        keys += [line.split("#", 1)[0].strip() for line in Path(file).read_text().splitlines()]
    return tuple(dict.fromkeys(key for key in keys if key))

# LeRobot checkpoints (`serve --lerobot-policy`): rows of one LeRobot call (one Triton batch).
LEROBOT_MAX_BATCH_SIZE = 16

# `openpi-triton client --realtime`: the demo robot's control rate (SO-100 arms run LeRobot at 30 Hz).
REALTIME_CONTROL_HZ = 30.0
