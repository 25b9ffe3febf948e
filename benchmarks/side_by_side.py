"""`make bench`: one command, one machine, the same model.onnx and transforms, four ways of serving it.

Rows (each with the same robot schedule, see `openpi_triton.loadgen.schedule`):
  triton     the ensemble called directly over Triton gRPC (no front); robots = concurrent callers
  front      this project's front (`openpi-triton serve`, its own process) on the same Triton
  reference  OpenPI's reference WebsocketPolicyServer (openpi-server) serving the same policy in-process
  onnx       the floor: ONNX Runtime on the policy core alone, in this process; robots = threads

With `--model-config-name gpu_torch` Triton serves the PyTorch policy core on the GPU, and the reference
server and the in-process core (capacity, one robot's paired calls) run the same PyTorch core on the same
GPU; `benchmarks/gpu_fleet.py` runs it so on a GPU host.

Writes results.json, table.md, latency_cdf.png and scaling.png to --output (bench-results/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import channels, servers
from benchmarks.arguments import add_flags
from benchmarks.channels import OpenChannelFactory
from benchmarks.core_capacity import core_capacity
from benchmarks.cpu import tree_cpu_seconds
from benchmarks.front_overhead import paired_one_robot
from benchmarks.report import markdown, targets
from benchmarks.triton_stats import TritonStats, delta
from openpi_policy.core import Core, load_core
from openpi_policy.core_config import core_settings
from openpi_triton.config import CPU_CONFIG_NAME, DEFAULT_MODEL_REPOSITORY, DEFAULT_POLICY, core_onnx_path
from openpi_triton.example_observations import describe, make_observations
from openpi_triton.loadgen.fleet import drive_fleet
from openpi_triton.loadgen.machine import machine_info
from openpi_triton.loadgen.plots import plot_latency_cdf, plot_scaling
from openpi_triton.loadgen.schedule import Schedule
from openpi_triton.loadgen.stats import PointResult
from openpi_triton.loadgen.websocket import encode_observations
from openpi_triton.triton.repository import config_path, read_model_config

ROWS: dict[str, str] = {
    "triton": "Triton gRPC direct",
    "front": "openpi-triton front",
    "reference": "OpenPI reference server",
    "onnx": "ONNX Runtime, core only",
}


@dataclass(frozen=True)
class SideBySideConfig:
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    triton_url: str | None = None  # None: start an embedded tritonserver
    format: str = DEFAULT_POLICY
    policy: str | None = None      # default: the policy named like the format
    robots: tuple[int, ...] = (1, 4, 16, 64)
    rows: tuple[str, ...] = tuple(ROWS)
    schedule: Schedule = field(default_factory=lambda: Schedule(rate_hz=10.0, replan_steps=5))
    duration_s: float = 20.0
    warmup_s: float = 3.0
    output: Path = Path("bench-results")
    seed: int = 0
    progress: bool = True
    capacity_batches: tuple[int, ...] = (1, 2, 4, 8, 16)  # policy-core batch sizes timed with the floor row
    capacity_rounds: int = 5
    paired_calls: int = 300  # rounds of one robot calling every path in turn (direct, fronts, reference, core)
    model_config_name: str = CPU_CONFIG_NAME  # the config variant Triton, the reference and the core run
    device: str | None = None  # the PyTorch core's device (reference server, in-process); None: the config's
    tritonserver: Path | None = None  # the embedded tritonserver's directory; None: the nvidia-pytriton wheel's

    @property
    def policy_name(self) -> str:
        return self.policy or self.format

    def smoke(self) -> SideBySideConfig:
        """A few seconds in all: tiny fleets, one-second windows, a fast schedule so each window has answers."""
        return replace(self, robots=(1, 2), duration_s=1.0, warmup_s=0.3, schedule=Schedule(50.0, 5),
                       capacity_batches=(1, 2), capacity_rounds=1, paired_calls=10)


@dataclass
class _Window:
    """Server-side counters over the measurement window: Triton statistics and CPU of server processes."""

    stats: TritonStats | None
    pids: dict[str, int | None]
    _start: dict[str, Any] = field(default_factory=dict)
    _end: dict[str, Any] = field(default_factory=dict)

    def __call__(self, edge: str) -> None:
        target = self._start if edge == "start" else self._end
        target["cpu"] = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items() if pid}
        if self.stats is not None:
            target["triton"] = self.stats.snapshot()

    def attach(self, point: PointResult) -> PointResult:
        answers = point.throughput * point.duration_s
        if not (self._start and self._end and answers):
            return point
        cpu = {name: 1000 * (self._end["cpu"][name] - self._start["cpu"][name]) / answers
               for name in self._start["cpu"]}
        cpu["loadgen"] = 1000 * point.client_cpu * point.duration_s / answers
        point.cpu_per_request_ms = cpu
        if "triton" in self._start:
            point.triton = delta(self._start["triton"], self._end["triton"])
        return point


@dataclass
class _Row:
    """How to reach one row's server, and which processes to account CPU to."""

    channels: OpenChannelFactory
    pids: dict[str, int | None]
    stats: TritonStats | None = None  # Triton statistics over each window (rows served by Triton)


def _run_point(config: SideBySideConfig, name: str, row: _Row, robots: int) -> PointResult:
    """One fleet size of one row, in a fresh event loop."""
    window = _Window(row.stats, row.pids)

    async def point() -> PointResult:
        async with row.channels() as open_channel:
            return await drive_fleet(name, open_channel, robots, config.schedule, config.duration_s,
                                     config.warmup_s, config.seed, config.progress, on_window=window)

    return window.attach(asyncio.run(point()))


def _warm_up(row: _Row) -> None:
    """One call through a row before its first point: a server's first call pays for what its later ones
    do not (PyTorch's lazy start in the reference server took over 3 s on the loaded 2-core VM, so its
    robot sent nothing inside a smoke run's window)."""
    async def once() -> None:
        async with row.channels() as open_channel:
            channel = await open_channel(0)
            try:
                await channel.call()
            finally:
                await channel.close()

    asyncio.run(once())


@contextlib.contextmanager
def _stats(triton_url: str, policy: str) -> Iterator[TritonStats]:
    stats = TritonStats(triton_url, policy)
    try:
        yield stats
    finally:
        stats.close()


def run(config: SideBySideConfig, triton: tuple[str, int | None] | None = None,
        core: Core | None = None) -> dict[str, list[PointResult]]:
    """Run every row and write the results; returns row -> points. `triton`: (gRPC URL, pid) of a Triton
    already started on this host (as `servers.triton` starts one), instead of `config.triton_url`'s;
    `core`: the in-process core, already built (a GPU's captures take seconds), instead of `_core`'s.

    Every server starts first and answers one call (not measured); then each fleet size runs every row
    back to back, in an order that reverses from one fleet size to the next, so that rows are compared
    over the same minutes of a machine whose speed drifts (a shared 2-core VM does, by tens of percent).
    """
    unknown = set(config.rows) - set(ROWS)
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    observations = make_observations(config.format, 8, config.seed)
    frames = encode_observations(config.format, seed=config.seed)
    capacity: dict[str, Any] | None = None
    paired: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        triton_url, triton_pid = triton or (
            stack.enter_context(servers.triton(config.triton_url, config.model_repository, config.model_config_name,
                                               config.tritonserver))
            if {"triton", "front"} & set(config.rows) else (None, None))
        stats = stack.enter_context(_stats(triton_url, config.policy_name)) if triton_url else None
        front_url = reference_url = None
        core = core or _core(config)
        if core is not None:
            capacity = core_capacity(core, config.capacity_batches, config.capacity_rounds)
        setup: dict[str, _Row] = {}
        for name in config.rows:
            if name == "triton":
                assert triton_url is not None
                setup[name] = _Row(channels.triton_channels(triton_url, config.policy_name, observations),
                                   {"triton": triton_pid}, stats)
            elif name == "front":
                assert triton_url is not None
                # An embedded Triton (no --triton-url) shares this host: the front uses shared memory.
                front_url, process = stack.enter_context(
                    servers.front(triton_url, config.policy_name, triton_pid is not None))
                setup[name] = _Row(channels.websocket_channels(front_url, frames),
                                   {"front": process.pid, "triton": triton_pid}, stats)
            elif name == "reference":
                reference_url, process = stack.enter_context(servers.reference_server(
                    config.model_repository, config.policy_name, config.model_config_name, config.device))
                setup[name] = _Row(channels.websocket_channels(reference_url, frames), {"reference": process.pid})
            else:
                assert core is not None
                setup[name] = _Row(channels.core_channels(core, max(config.robots)), {})
        for row in setup.values():
            _warm_up(row)
        rows: dict[str, list[PointResult]] = {name: [] for name in config.rows}
        for index, robots in enumerate(config.robots):
            order = config.rows if index % 2 == 0 else config.rows[::-1]
            _announce(config, robots, order)
            for name in order:
                rows[name].append(_run_point(config, name, setup[name], robots))
        if front_url is not None and triton_url is not None and config.paired_calls:
            others = {"reference": reference_url} if reference_url else {}
            paired = _paired(config, triton_url, front_url, triton_pid is not None, others, core)
    write(config, rows, observations[0], capacity, paired)
    return rows


def _core(config: SideBySideConfig) -> Core | None:
    """The policy core in this process, for the capacity table, one robot's paired calls and the floor row:
    ONNX Runtime when the floor row runs, or the PyTorch core of a config that runs one (the floor row's
    threads would share its static buffers, so it has no floor row)."""
    core_config = read_model_config(config_path(config.model_repository / "policy_core", config.model_config_name))
    torch_core = core_settings(core_config) is not None
    if torch_core and "onnx" in config.rows:
        raise ValueError(f"the onnx row runs ONNX Runtime, but {config.model_config_name!r} runs PyTorch: "
                         "leave the row out (its capacity and paired calls still run)")
    if not torch_core and "onnx" not in config.rows:
        return None
    return load_core(core_config, core_onnx_path(config.model_repository), config.device)


def _paired(config: SideBySideConfig, triton_url: str, front_url: str, shared_memory: bool,
            others: dict[str, str], core: Core | None) -> dict[str, Any]:
    """One robot on every path in turn (`front_overhead.paired_one_robot`); beside a front on this host's
    Triton (shared memory), a second front without shared memory shows what that transport is worth."""
    def measure(fronts: dict[str, str]) -> dict[str, Any]:
        return paired_one_robot(triton_url, {**fronts, **others}, config.policy_name, config.format,
                                config.paired_calls, seed=config.seed, core=core)

    if not shared_memory:
        return measure({"front": front_url})
    with servers.front(triton_url, config.policy_name, shared_memory=False) as (inline_url, _):
        return measure({"front": front_url, "front, no shared memory": inline_url})


def _announce(config: SideBySideConfig, robots: int, order: tuple[str, ...]) -> None:
    if config.progress:
        print(f"== {robots} robots: {', '.join(ROWS[name] for name in order)}; {config.schedule.describe()}",
              file=sys.stderr, flush=True)


def write(config: SideBySideConfig, rows: dict[str, list[PointResult]], observation: dict[str, Any],
          capacity: dict[str, Any] | None = None, paired: dict[str, Any] | None = None) -> None:
    output = config.output
    output.mkdir(parents=True, exist_ok=True)
    summary = targets(rows, paired, capacity)
    machine = machine_info()
    settings = {**asdict(config), "model_repository": str(config.model_repository), "output": str(output),
                "schedule": config.schedule.describe(),
                "tritonserver": None if config.tritonserver is None else str(config.tritonserver)}
    (output / "results.json").write_text(json.dumps({
        "config": settings, "machine": machine, "observation": describe(observation), "targets": summary,
        "core_capacity": capacity, "paired_one_robot": paired,
        "rows": {row: {"title": ROWS[row], "points": [p.to_dict() for p in points]} for row, points in rows.items()},
    }, indent=1))
    header = (f"Side-by-side, {config.format} observations ({config.policy_name} policy); "
              f"{config.schedule.describe()}; {config.duration_s:g} s measured per point after "
              f"{config.warmup_s:g} s warm-up. "
              f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB.")
    (output / "table.md").write_text(markdown(rows, ROWS, summary, header, capacity))
    titled = {ROWS[row]: points for row, points in rows.items()}
    plot_latency_cdf(titled, output / "latency_cdf.png")
    period = config.schedule.period_s
    plot_scaling(titled, output / "scaling.png", 1 / period if period else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "triton-url", "model-repository", "format", "policy", "robots", robots=(1, 4, 16, 64))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--rate", type=float, default=10.0, help="control rate in Hz; 0 = closed loop")
    parser.add_argument("--replan-steps", type=int, default=5)
    parser.add_argument("--deadline-ms", type=float, default=None, help="default: replan-steps / rate")
    add_flags(parser, "duration", "warmup", "output", "seed", output=Path("bench-results"))
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all: robots 1,2 and 1 s windows")
    parser.add_argument("--model-config-name", default=CPU_CONFIG_NAME,
                        help="config variant for Triton, the reference server and the in-process core")
    parser.add_argument("--device", help="the PyTorch core's device outside Triton (default: the config's)")
    add_flags(parser, "tritonserver")
    args = parser.parse_args(argv)
    config = SideBySideConfig(
        model_repository=args.model_repository, triton_url=args.triton_url, format=args.format, policy=args.policy,
        robots=args.robots, rows=tuple(r for r in args.rows.split(",") if r),
        schedule=Schedule(args.rate, args.replan_steps, None if args.deadline_ms is None else args.deadline_ms / 1000),
        duration_s=args.duration, warmup_s=args.warmup, output=args.output, seed=args.seed,
        model_config_name=args.model_config_name, device=args.device, tritonserver=args.tritonserver,
    )
    if args.smoke:
        config = config.smoke()
    rows = run(config)
    print((config.output / "table.md").read_text())
    failed = [f"{row} x{p.robots}: {p.error_messages or 'no answers'}" for row, points in rows.items()
              for p in points if not p.ok]
    if failed:
        print("errors:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
