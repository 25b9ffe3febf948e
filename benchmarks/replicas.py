"""One front over 1 and over 2 Triton replicas on this machine: the same fleets, closed loop.

    .venv/bin/python -m benchmarks.replicas [--robots 1,4,16] [--duration 20] [--ort-threads 0]

Every replica is an embedded tritonserver on free ports (ONNX Runtime with --ort-threads threads in
each; 0 = one per core, as `openpi-triton serve` runs it); each setup has its own front
(`openpi-triton serve --triton-url a[,b]`, its own process, shared memory on). All servers start first;
then each fleet size runs on both setups back to back, in an order that reverses from one size to the
next, so both are compared over the same minutes of a machine whose speed drifts. Per point:
throughput, latency percentiles, how the front spread the calls over the replicas (its /metrics) and
the CPU seconds per answer of the front and of the tritonservers. Writes --output/results.json and
table.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import channels, servers
from benchmarks.arguments import add_flags
from benchmarks.cpu import tree_cpu_seconds
from benchmarks.report import results_table
from openpi_policy.core import THREADS_ENV
from openpi_triton.loadgen.fleet import drive_fleet
from openpi_triton.loadgen.machine import machine_info
from openpi_triton.loadgen.schedule import Schedule
from openpi_triton.loadgen.stats import PointResult
from openpi_triton.loadgen.websocket import encode_observations

_REPLICA_OK = re.compile(r'^openpi_triton_replica_requests_total\{outcome="ok",replica="([^"]+)"\} (\S+)$', re.M)


@dataclass
class Setup:
    """One front and the tritonservers behind it."""

    replicas: int
    front_url: str  # ws:// URL of the policy
    pids: dict[str, int]  # "front", "triton-0", ...

    @property
    def label(self) -> str:
        return f"{self.replicas} replica" + ("s" if self.replicas > 1 else "")

    def replica_calls(self) -> dict[str, float]:
        base = self.front_url.replace("ws://", "http://").split("/v1/", 1)[0]
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
            text = response.read().decode()
        return {replica: float(value) for replica, value in _REPLICA_OK.findall(text)}


@dataclass
class _Window:
    """The front's per-replica calls and the processes' CPU seconds at the window's edges."""

    setup: Setup
    edges: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, edge: str) -> None:
        self.edges[edge] = {"calls": self.setup.replica_calls(),
                            "cpu": {name: tree_cpu_seconds(pid) for name, pid in self.setup.pids.items()}}

    def summary(self, point: PointResult) -> dict[str, Any]:
        start, end = self.edges.get("start"), self.edges.get("end")
        answers = point.throughput * point.duration_s
        if not (start and end and answers):
            return {}
        calls = {replica: end["calls"][replica] - start["calls"].get(replica, 0.0) for replica in end["calls"]}
        total = sum(calls.values()) or 1.0
        cpu = {name: 1000 * (end["cpu"][name] - start["cpu"][name]) / answers for name in start["cpu"]}
        return {"replica_share": {replica: count / total for replica, count in sorted(calls.items())},
                "cpu_ms_per_answer": {"front": cpu.pop("front"), "tritonservers": sum(cpu.values())}}


@contextlib.contextmanager
def setup(replicas: int, model_repository: Path, policy: str, ort_threads: int,
          triton_urls: list[str] | None = None) -> Iterator[Setup]:
    """A front over `replicas` tritonservers: the first of `triton_urls` (running on this host), else
    embedded ones started here."""
    with contextlib.ExitStack() as stack:
        urls, pids = [], {}
        for index in range(replicas):
            if triton_urls:
                urls.append(triton_urls[index])
                continue
            with _environment(THREADS_ENV, str(ort_threads)):  # read by the python stubs it spawns
                url, pid = stack.enter_context(servers.triton(None, model_repository))
            urls.append(url)
            pids[f"triton-{index}"] = pid
        front_url, process = stack.enter_context(servers.front(",".join(urls), policy, shared_memory=True))
        yield Setup(replicas, front_url, {"front": process.pid, **pids})


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_point(target: Setup, robots: int, frames: list[bytes], duration_s: float, warmup_s: float,
              progress: bool) -> tuple[PointResult, dict[str, Any]]:
    window = _Window(target)

    async def point() -> PointResult:
        async with channels.websocket_channels(target.front_url, frames)() as open_channel:
            return await drive_fleet(target.label, open_channel, robots, Schedule(rate_hz=0), duration_s, warmup_s,
                                     progress=progress, on_window=window)

    result = asyncio.run(point())
    return result, window.summary(result)


def run(model_repository: Path, format_name: str, policy: str, robots: tuple[int, ...], duration_s: float,
        warmup_s: float, ort_threads: int, output: Path, progress: bool = True,
        triton_urls: list[str] | None = None) -> dict[str, Any]:
    if triton_urls is not None and len(triton_urls) != 2:
        raise ValueError(f"give two Triton URLs (the replicas), got {triton_urls}")
    frames = encode_observations(format_name)
    rows: dict[str, list[PointResult]] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    with (setup(1, model_repository, policy, ort_threads, triton_urls) as one,
          setup(2, model_repository, policy, ort_threads, triton_urls) as two):
        for index, count in enumerate(robots):
            for target in (one, two) if index % 2 == 0 else (two, one):
                point, detail = run_point(target, count, frames, duration_s, warmup_s, progress)
                rows.setdefault(target.label, []).append(point)
                details.setdefault(target.label, []).append({"robots": count, **detail})
    results = {
        "config": {"format": format_name, "policy": policy, "robots": list(robots), "duration_s": duration_s,
                   "warmup_s": warmup_s, "ort_threads": ort_threads, "schedule": Schedule(rate_hz=0).describe()},
        "machine": machine_info(),
        "rows": {label: {"points": [p.to_dict() for p in points], "details": details[label]}
                 for label, points in rows.items()},
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=1))
    (output / "table.md").write_text(table(rows, details))
    return results


def table(rows: dict[str, list[PointResult]], details: dict[str, list[dict[str, Any]]]) -> str:
    lines = [results_table(rows, {}), "",
             "| setup | robots | calls per replica | front CPU ms / answer | tritonservers CPU ms / answer |",
             "| --- | ---: | --- | ---: | ---: |"]
    for label, entries in details.items():
        for entry in entries:
            if "replica_share" not in entry:
                continue
            share = " / ".join(f"{100 * value:.0f}%" for value in entry["replica_share"].values())
            cpu = entry["cpu_ms_per_answer"]
            lines.append(f"| {label} | {entry['robots']} | {share} | {cpu['front']:.1f} | {cpu['tritonservers']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "model-repository", "format", "policy", "robots", "duration", "warmup", robots=(1, 4, 16))
    parser.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime threads per tritonserver "
                        "(0 = one per core)")
    parser.add_argument("--triton-urls", help="two running Tritons on this host (a,b) instead of embedded ones: "
                        "the first serves the 1-replica setup, both the 2-replica setup")
    add_flags(parser, "output", output=Path("bench-results/replicas"))
    args = parser.parse_args(argv)
    results = run(args.model_repository, args.format, args.policy or args.format, args.robots, args.duration,
                  args.warmup, args.ort_threads, args.output,
                  triton_urls=args.triton_urls.split(",") if args.triton_urls else None)
    print((args.output / "table.md").read_text())
    failed = [f"{label} x{p['robots']}: {p['error_messages'] or 'no answers'}"
              for label, row in results["rows"].items() for p in row["points"] if p["errors"] or not p["requests"]]
    if failed:
        print("errors:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
