"""Robot-fleet load generator: N simulated robots, each with its own websocket speaking the OpenPI wire
format (msgpack-numpy frames, as `openpi_client` sends them), against any OpenPI server.

The schedule (control rate, replanning, deadline) is defined in `benchmarks.fleet`. `openpi-triton
bench` is the command-line front of `run_sweep`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openpi_client import msgpack_numpy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.fleet import ChannelBroken, Schedule, drive_fleet
from benchmarks.observations import describe, make_observations
from benchmarks.stats import PointResult

# Distinct observations per run: enough that no cache sees the same frame twice in a row.
OBSERVATION_POOL = 8


class ServerError(RuntimeError):
    """The server answered with a text frame (OpenPI's error reply) or without actions."""


class WebsocketChannel:
    """One robot's websocket. Frames are encoded once up front: encoding is the robot's cost, not the
    server's, and one process has to drive 64 robots."""

    def __init__(self, websocket: ClientConnection, frames: Sequence[bytes], offset: int) -> None:
        self.websocket, self.frames, self.count = websocket, frames, offset
        self.metadata: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, frames: Sequence[bytes], offset: int = 0,
                   api_key: str | None = None) -> WebsocketChannel:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        try:
            # The options openpi_client connects with; no keep-alive pings, which would only add noise.
            websocket = await connect(url, compression=None, max_size=None, additional_headers=headers,
                                      ping_interval=None, open_timeout=60)
            channel = cls(websocket, frames, offset)
            channel.metadata = msgpack_numpy.unpackb(await websocket.recv())
        except (OSError, ConnectionClosed, asyncio.TimeoutError) as error:
            raise ChannelBroken(f"cannot connect to {url}: {error}") from None
        return channel

    async def call(self) -> float | None:
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        try:
            await self.websocket.send(frame)
            reply = await self.websocket.recv()
        except ConnectionClosed as error:
            raise ChannelBroken(f"connection closed: {error}") from None
        if isinstance(reply, str):
            raise ServerError(reply.strip().splitlines()[-1] if reply.strip() else "empty error frame")
        answer = msgpack_numpy.unpackb(reply)
        if "actions" not in answer:
            raise ServerError(f"answer without 'actions' (keys {sorted(answer)[:10]})")
        return answer.get("server_timing", {}).get("infer_ms")

    async def close(self) -> None:
        await self.websocket.close()


def encode_observations(format_name: str, count: int = OBSERVATION_POOL, seed: int = 0) -> list[bytes]:
    return [msgpack_numpy.packb(obs) for obs in make_observations(format_name, count, seed)]


async def run_point(label: str, url: str, frames: Sequence[bytes], robots: int, schedule: Schedule,
                    duration_s: float, warmup_s: float, api_key: str | None = None,
                    progress: bool = True, seed: int = 0) -> PointResult:
    """One fleet size against one websocket URL."""
    async def open_channel(index: int) -> WebsocketChannel:
        return await WebsocketChannel.open(url, frames, index, api_key)

    return await drive_fleet(label, open_channel, robots, schedule, duration_s, warmup_s, seed, progress)


@dataclass(frozen=True)
class LoadgenConfig:
    url: str
    format: str = "libero"
    robots: tuple[int, ...] = (1, 4, 16)
    schedule: Schedule = field(default_factory=Schedule)
    duration_s: float = 20.0
    warmup_s: float = 2.0
    api_key: str | None = None
    label: str = "server"
    seed: int = 0
    progress: bool = True


def run_sweep(config: LoadgenConfig) -> list[PointResult]:
    """Every fleet size in turn (each in a fresh event loop, like separate runs)."""
    frames = encode_observations(config.format, seed=config.seed)
    return [
        asyncio.run(run_point(config.label, config.url, frames, robots, config.schedule, config.duration_s,
                              config.warmup_s, config.api_key, config.progress, config.seed))
        for robots in config.robots
    ]


def write_results(config: LoadgenConfig, points: list[PointResult], output: Path) -> dict[str, Path]:
    """results.json, latency_cdf.png and scaling.png under `output`; returns what was written."""
    from benchmarks.machine import machine_info
    from benchmarks.plots import plot_latency_cdf, plot_scaling

    output.mkdir(parents=True, exist_ok=True)
    results = {
        "url": config.url, "format": config.format, "schedule": config.schedule.describe(),
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
