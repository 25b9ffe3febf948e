"""The front's settings: one dataclass, filled from command-line flags or OPENPI_TRITON_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8000
    # None: start the embedded tritonserver (CPU) on the ports below.
    triton_url: str | None = None
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_http_port: int = 8003
    model_repository: Path = Path("model_repository")
    default_policy: str = "libero"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Four 480x640 RGB cameras are 3.7 MB; 16 MiB leaves room for more cameras and state.
    max_frame_bytes: int = 16 * MIB
    max_connections: int = 256
    # Long enough for a person to reset a scene between episodes without reconnecting.
    idle_timeout_s: float = 900.0
    triton_timeout_s: float = 10.0
    # Camera frames reach Triton through system shared memory: only when both run on one host.
    triton_shared_memory: bool = False
    log_level: str = "info"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


def read_api_keys(inline: str | None, file: Path | None) -> tuple[str, ...]:
    """Keys from a comma-separated string and/or a file with one key per line (# comments allowed)."""
    keys = [key.strip() for key in (inline or "").split(",")]
    if file is not None:
        keys += [line.split("#", 1)[0].strip() for line in Path(file).read_text().splitlines()]
    return tuple(dict.fromkeys(key for key in keys if key))
