"""Robot-fleet load generator: N simulated robots, each with its own websocket (or GR00T client socket),
against any OpenPI (or GR00T) server, at one fleet size after another; results as JSON, a table and plots.

The schedule (control rate, replanning, deadline) is defined in `openpi_triton.loadgen.schedule`.
`openpi-triton bench` is the command-line front of `run_sweep`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from openpi_triton.config import DEFAULT_POLICY, GR00T_N16
from openpi_triton.example_observations import describe, make_observations
from openpi_triton.loadgen.fleet import drive_fleet
from openpi_triton.loadgen.schedule import Schedule
from openpi_triton.loadgen.stats import PointResult
from openpi_triton.loadgen.websocket import WebsocketChannel, encode_observations


async def run_point(label: str, url: str, frames: Sequence[bytes], robots: int, schedule: Schedule,
                    duration_s: float, warmup_s: float, api_key: str | None = None,
                    progress: bool = True, seed: int = 0, protocol: str = "openpi") -> PointResult:
    """One fleet size against one server: websocket robots at a ws:// URL, or GR00T clients at a tcp:// one."""
    if protocol == "gr00t":
        import zmq.asyncio

        from openpi_triton.loadgen.gr00t import Gr00tChannel

        context = zmq.asyncio.Context()

        async def open_gr00t(index: int) -> Gr00tChannel:
            return Gr00tChannel(context, url, frames, index)

        try:
            return await drive_fleet(label, open_gr00t, robots, schedule, duration_s, warmup_s, seed, progress)
        finally:
            context.term()

    async def open_channel(index: int) -> WebsocketChannel:
        return await WebsocketChannel.open(url, frames, index, api_key)

    return await drive_fleet(label, open_channel, robots, schedule, duration_s, warmup_s, seed, progress)


@dataclass(frozen=True)
class LoadgenConfig:
    url: str
    format: str = DEFAULT_POLICY
    robots: tuple[int, ...] = (1, 4, 16)
    schedule: Schedule = field(default_factory=Schedule)
    duration_s: float = 20.0
    warmup_s: float = 2.0
    api_key: str | None = None
    label: str = "server"
    seed: int = 0
    progress: bool = True
    protocol: str = "openpi"  # or "gr00t": GR00T clients (ZeroMQ) at a tcp:// URL
    gr00t_generation: str = GR00T_N16


def run_sweep(config: LoadgenConfig) -> list[PointResult]:
    """Every fleet size in turn (each in a fresh event loop, like separate runs)."""
    if config.protocol == "gr00t":
        from openpi_triton.loadgen.gr00t import encode_requests

        frames = encode_requests(config.format, config.gr00t_generation, seed=config.seed, api_token=config.api_key)
    else:
        frames = encode_observations(config.format, seed=config.seed)
    return [
        asyncio.run(run_point(config.label, config.url, frames, robots, config.schedule, config.duration_s,
                              config.warmup_s, config.api_key, config.progress, config.seed, config.protocol))
        for robots in config.robots
    ]


def write_results(config: LoadgenConfig, points: list[PointResult], output: Path) -> dict[str, Path]:
    """results.json, latency_cdf.png and scaling.png under `output`; returns what was written."""
    from openpi_triton.loadgen.machine import machine_info
    from openpi_triton.loadgen.plots import plot_latency_cdf, plot_scaling

    output.mkdir(parents=True, exist_ok=True)
    results = {
        "url": config.url, "format": config.format, "protocol": config.protocol,
        "schedule": config.schedule.describe(),
        "rate_hz": config.schedule.rate_hz, "replan_steps": config.schedule.replan_steps,
        "duration_s": config.duration_s, "warmup_s": config.warmup_s,
        "observation": describe(make_observations(config.format, 1, config.seed)[0]),
        "machine": machine_info(), "points": [p.to_dict() for p in points],
    }
    files = {"results": output / "results.json"}
    files["results"].write_text(json.dumps(results, indent=1))
    rows = {config.label: points}
    files["latency_cdf"] = plot_latency_cdf(rows, output / "latency_cdf.png")
    period = config.schedule.period_s
    files["scaling"] = plot_scaling(rows, output / "scaling.png", 1 / period if period else None)
    return files


def format_table(points: list[PointResult]) -> str:
    header = "robots  answers  req/s   p50 ms   p90 ms   p99 ms   max ms  misses  errors"
    lines = [header]
    for p in points:
        lat = p.latency_ms
        lines.append(f"{p.robots:6d}  {p.requests:7d}  {p.throughput:5.1f}  {lat['p50']:7.1f}  {lat['p90']:7.1f}  "
                     f"{lat['p99']:7.1f}  {lat['max']:7.1f}  {p.deadline_misses:6d}  {p.errors:6d}")
    return "\n".join(lines)
