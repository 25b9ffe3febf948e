"""The flags the benchmarks share, defined once: `add_flags(parser, "model-repository", "robots", ...)`,
with a script's own defaults as keyword arguments (`robots=(1, 4, 16)`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from openpi_triton.config import DEFAULT_MODEL_REPOSITORY, DEFAULT_POLICY
from openpi_triton.loadgen.schedule import parse_robot_counts

FLAGS: dict[str, dict[str, Any]] = {
    "model-repository": {"type": Path, "default": DEFAULT_MODEL_REPOSITORY, "help": "the model repository"},
    "format": {"default": DEFAULT_POLICY, "help": "observation format (libero, droid, aloha)"},
    "policy": {"help": "policy (ensemble) to ask (default: named like the format)"},
    "triton-url": {"help": "gRPC address of a running Triton (default: start an embedded one)"},
    "robots": {"type": parse_robot_counts, "help": "robot counts, comma-separated"},
    "duration": {"type": float, "default": 20.0, "help": "measured seconds per point"},
    "warmup": {"type": float, "default": 3.0, "help": "seconds of load before each measurement"},
    "seed": {"type": int, "default": 0, "help": "seed of the observations (and sampling noise)"},
    "output": {"type": Path, "help": "where the results go"},
    "tritonserver": {"type": Path, "help": "tritonserver directory (default: the wheel's)"},
    "size": {"choices": ("full", "tiny"), "help": "the LeRobot checkpoint built: full-size SmolVLA or a tiny one"},
}


def add_flags(parser: argparse.ArgumentParser, *names: str, **defaults: Any) -> None:
    """Add the shared flags `names`; `defaults` (by destination: model_repository=...) replace theirs."""
    for name in names:
        spec = dict(FLAGS[name])
        destination = name.replace("-", "_")
        if destination in defaults:
            spec["default"] = defaults.pop(destination)
        if "default" in spec and spec["default"] is not None and "default:" not in spec.get("help", ""):
            shown = ",".join(map(str, spec["default"])) if isinstance(spec["default"], tuple) else spec["default"]
            spec["help"] = f"{spec.get('help', '')} [default: {shown}]".strip()
        parser.add_argument(f"--{name}", **spec)
    if defaults:
        raise TypeError(f"defaults for flags not added: {sorted(defaults)}")
