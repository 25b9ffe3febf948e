"""Every setting and default of the server, once: the `Settings` dataclass, filled by the CLI from flags
or OPENPI_TRITON_* environment variables, and the defaults other layers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
ENV_PREFIX = "OPENPI_TRITON_"

DEFAULT_MODEL_REPOSITORY = Path("model_repository")
DEFAULT_POLICY = "libero"
FRONT_PORT = 8000  # the websocket/HTTP port of the front (and of OpenPI's own server)
# The policy GR00T clients get (their protocol names none): the repository's GR00T-shaped example.
DEFAULT_GR00T_POLICY = "so100"
GR00T_PORT = 5555  # GR00T's own default, for documentation and the load generator
# GR00T client generations: how ModalityConfig is read (N1.5: a JSON string, prefixed keys; N1.6: a map,
# bare keys) and how observations are sent.
GR00T_N15, GR00T_N16 = "n1.5", "n1.6"
GR00T_GENERATIONS = (GR00T_N15, GR00T_N16)
LEROBOT_PORT = 8080  # LeRobot's async-inference default (its RobotClient's --server_address localhost:8080)
# Triton's own defaults (its gRPC, metrics and HTTP ports), for the embedded tritonserver.
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
TRITON_HTTP_PORT = 8003
# The embedded tritonserver loads `configs/<name>.pbtxt` of every model that has one (`--model-config-name`):
# the CPU configuration by default, or the PyTorch policy core on a GPU (no TensorRT needed).
CPU_CONFIG_NAME = "cpu"
GPU_TORCH_CONFIG_NAME = "gpu_torch"

# --- Triton, as the front calls it ------------------------------------------------------------------
TRITON_TIMEOUT_S = 10.0  # each call's limit (--triton-timeout)
TRITON_RESOLVE_INTERVAL_S = 5.0  # names in --triton-url resolved again (replicas come and go)
TRITON_CHECK_INTERVAL_S = 1.0  # each replica's readiness checked
# A readiness check answers at once on a live Triton (its health service does not wait for the models).
REPLICA_CHECK_TIMEOUT_S = 2.0
# Failed checks in a row that take a ready replica out of routing: one slow answer from a busy machine is
# not an outage. (A call that finds a replica unreachable takes it out at once.)
REPLICA_CHECK_FAILURES_DOWN = 2
# The least time between two reads of a Triton's policies (a robot asking for an unknown policy re-reads).
REDISCOVER_INTERVAL_S = 2.0
# What the front's shared-memory regions (camera frames to a Triton on this host) may hold in all; past
# it, requests go inline.
SHARED_MEMORY_BUDGET_BYTES = 256 * MIB
# /readyz answers from state a background task refreshes this often, each policy's check bounded by
# READINESS_CHECK_TIMEOUT_S: the probe never waits on Triton.
READINESS_REFRESH_S = 1.0
READINESS_CHECK_TIMEOUT_S = 5.0

# --- the embedded tritonserver ------------------------------------------------------------------------
TRITON_STARTUP_TIMEOUT_S = 180.0  # until every model is ready (a cold python backend is slow)
TRITON_RELOAD_TIMEOUT_S = 120.0  # to unload and load again a model whose python stub died
# Restarts: the first retry waits TRITON_RESTART_DELAY_S, each next one twice as long, up to the maximum.
TRITON_RESTART_DELAY_S = 1.0
TRITON_RESTART_MAX_DELAY_S = 30.0

# --- connections ----------------------------------------------------------------------------------
# Websocket pings find dead robots (a client that vanished without closing) within 80 s; the timeout is
# generous because a robot's event loop may be busy for a while between frames.
WS_PING_INTERVAL_S = 20.0
WS_PING_TIMEOUT_S = 60.0
# After the drain, how long uvicorn waits for requests still running before it cancels them.
GRACEFUL_SHUTDOWN_S = 5.0
# ZMTP heartbeats find GR00T clients that vanished without closing, as the websocket's pings do.
GR00T_HEARTBEAT_INTERVAL_MS = 20_000
GR00T_HEARTBEAT_TIMEOUT_MS = 60_000
GR00T_EXPIRY_CHECK_S = 10.0  # how often idle GR00T clients are forgotten
# The GR00T endpoint's watch of its socket retries an error after this long, doubling up to the maximum.
GR00T_WATCH_RETRY_S = 0.1
GR00T_WATCH_RETRY_MAX_S = 10.0


def env_var(flag: str) -> str:
    """The environment variable of a flag: `triton-url` -> OPENPI_TRITON_TRITON_URL."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def core_onnx_path(model_repository: Path) -> Path:
    """Where the policy core's ONNX lives in a model repository (exported, never committed)."""
    return Path(model_repository) / "policy_core" / "1" / "model.onnx"


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = FRONT_PORT
    # None: start the embedded tritonserver (CPU) on the ports below. Else one or more host:port, comma-
    # separated; a name stands for every address it resolves to (a Kubernetes headless Service).
    triton_url: str | None = None
    # How often names in triton_url are resolved again (replicas come and go), and each replica checked.
    triton_resolve_interval_s: float = TRITON_RESOLVE_INTERVAL_S
    triton_check_interval_s: float = TRITON_CHECK_INTERVAL_S
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
    # After refusing a frame over the limit (close 1009), how long the front keeps reading and discarding
    # the rest of it before closing the socket: closing with unread data resets the connection, and the
    # reset destroys the close frame. Ends early when the robot closes its side.
    oversized_frame_linger_s: float = 10.0
    max_connections: int = 256
    # Live sessions of stateful policies (each holds the policy's state for its episode), as vllm-omni's
    # session manager caps them; one more is refused with a clear error until a session ends. Keep it at
    # most the `max_candidate_sequences` of the stateful models (model_repository/droid_wam_preprocess).
    max_live_sessions: int = 64
    # Long enough for a person to reset a scene between episodes without reconnecting.
    idle_timeout_s: float = 900.0
    triton_timeout_s: float = TRITON_TIMEOUT_S
    # Camera frames reach Triton through system shared memory: only when both run on one host. None (auto):
    # on for the embedded tritonserver, off for a --triton-url (`shares_memory`).
    triton_shared_memory: bool | None = None
    # On shutdown, how long robots' in-flight inferences may take to be answered before connections close.
    drain_timeout_s: float = 20.0
    # Embedded tritonserver restarts: the first retry waits this long, each next one twice as long.
    triton_restart_delay_s: float = TRITON_RESTART_DELAY_S
    triton_restart_max_delay_s: float = TRITON_RESTART_MAX_DELAY_S
    log_level: str = "info"
    # GR00T clients (ZeroMQ): off unless a port is set.
    gr00t_port: int | None = None
    gr00t_policy: str = DEFAULT_GR00T_POLICY
    gr00t_allow_kill: bool = False  # GR00T's `kill` endpoint stops the whole server when allowed
    gr00t_modality_form: str = GR00T_N16  # ModalityConfig as N1.5 or N1.6 clients read it
    # LeRobot robots (async-inference gRPC): off unless a port is set. Their client sends no credentials, so
    # loopback unless told otherwise; a wider bind needs networks allowed (CIDRs, checked on every call).
    lerobot_port: int | None = None
    lerobot_host: str = "127.0.0.1"
    lerobot_allow: tuple[str, ...] = ()
    lerobot_poll_s: float = 2.0  # GetActions waits this long for an observation (LeRobot's obs_queue_timeout)
    lerobot_similarity: float = 1.0  # joint-state L2 under which an observation is skipped (LeRobot's atol)
    lerobot_fps: float = 30.0  # spacing of the timestamps in a reply (LeRobot's server fps)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def shares_memory(self, embedded: bool) -> bool:
        """Whether camera frames go through shared memory, for an embedded tritonserver or a --triton-url."""
        return embedded if self.triton_shared_memory is None else self.triton_shared_memory


def read_api_keys(inline: str | None, file: Path | None) -> tuple[str, ...]:
    """Keys from a comma-separated string and/or a file with one key per line (# comments allowed)."""
    keys = [key.strip() for key in (inline or "").split(",")]
    if file is not None:
        keys += [line.split("#", 1)[0].strip() for line in Path(file).read_text().splitlines()]
    return tuple(dict.fromkeys(key for key in keys if key))

# LeRobot checkpoints (`serve --lerobot-policy`): rows of one LeRobot call (one Triton batch).
LEROBOT_MAX_BATCH_SIZE = 16
# Present when the NVIDIA driver is loaded: a LeRobot policy without --lerobot-device then runs on the GPU.
NVIDIA_DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"

# `openpi-triton client --realtime`: the demo robot's control rate (SO-100 arms run LeRobot at 30 Hz).
REALTIME_CONTROL_HZ = 30.0
