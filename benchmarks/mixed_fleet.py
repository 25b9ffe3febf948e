"""GR00T clients and OpenPI robots on one server at once: `openpi-triton serve --gr00t-port` (its own
process) on one Triton, N GR00T clients (ZeroMQ, N1.6 requests, the `so100` policy) and N stock-protocol
websocket robots (`libero`) driven side by side from this process, each fleet on the same schedule.
Reports each fleet's latency and throughput, and from Triton's statistics how the shared policy core
executed the two protocols' requests (executions, batch sizes) over the run, warm-up included.

    .venv/bin/python -m benchmarks.mixed_fleet --robots 4,16 --rate 10 --duration 20 --output bench-results/mixed
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.arguments import add_flags
from benchmarks.triton_stats import TritonStats, delta
from openpi_triton.config import GR00T_N16
from openpi_triton.loadgen.gr00t import encode_requests
from openpi_triton.loadgen.machine import machine_info
from openpi_triton.loadgen.schedule import Schedule
from openpi_triton.loadgen.stats import PointResult
from openpi_triton.loadgen.sweep import run_point
from openpi_triton.loadgen.websocket import encode_observations
from openpi_triton.process import free_port

GR00T_POLICY, OPENPI_POLICY = "so100", "libero"


async def _both(args: argparse.Namespace, urls: dict[str, str], frames: dict[str, list[bytes]],
                robots: int) -> list[PointResult]:
    schedule = Schedule(args.rate, args.replan_steps)
    return list(await asyncio.gather(*(
        run_point(protocol, urls[protocol], frames[protocol], robots, schedule, args.duration, args.warmup,
                  seed=args.seed, protocol=protocol)
        for protocol in ("gr00t", "openpi"))))


def shared_a_batch(core_batches: dict[int, int], gr00t_requests: int, total: int) -> bool | None:
    """Whether the policy core's executions provably mixed the two protocols: True when no subset of its
    batches holds exactly the GR00T requests (so some batch held requests of both); None when the counts
    cannot tell (Triton reports batch sizes, not which requests shared one)."""
    if sum(size * count for size, count in core_batches.items()) != total:
        return None  # other traffic in the window: the counts do not describe these fleets alone
    reachable = 1  # bit n set: some subset of the batches holds n requests
    for size, count in core_batches.items():
        for _ in range(count):
            reachable |= reachable << size
    return None if reachable >> gr00t_requests & 1 else True


def _row(point: PointResult) -> str:
    lat = point.latency_ms
    return (f"| {point.row} | {point.robots} | {point.requests} | {point.throughput:.1f} | {lat['p50']:.1f} | "
            f"{lat['p99']:.1f} | {point.deadline_misses} | {point.errors} |")


def run(args: argparse.Namespace) -> dict[str, Any]:
    gr00t_port = free_port()
    frames = {"gr00t": encode_requests(GR00T_POLICY, GR00T_N16, seed=args.seed),
              "openpi": encode_observations(OPENPI_POLICY, seed=args.seed)}
    points: list[dict[str, Any]] = []
    with servers.triton(args.triton_url, args.model_repository) as (triton_url, _), \
            servers.front(triton_url, OPENPI_POLICY, shared_memory=args.triton_url is None,
                          extra_flags=("--gr00t-port", str(gr00t_port), "--gr00t-policy", GR00T_POLICY)) as (ws, _):
        urls = {"gr00t": f"tcp://127.0.0.1:{gr00t_port}", "openpi": ws}
        stats = [TritonStats(triton_url, GR00T_POLICY), TritonStats(triton_url, OPENPI_POLICY)]
        try:
            for robots in args.robots:
                before = {name: entry for s in stats for name, entry in s.snapshot().items()}
                results = asyncio.run(_both(args, urls, frames, robots))
                after = {name: entry for s in stats for name, entry in s.snapshot().items()}
                triton = delta(before, after)
                core = {int(size): b["executions"] for size, b in triton["policy_core"]["batches"].items()}
                mixed = shared_a_batch(core, triton[GR00T_POLICY]["requests"],
                                       triton[GR00T_POLICY]["requests"] + triton[OPENPI_POLICY]["requests"])
                points.append({"robots": robots, "fleets": [r.to_dict() for r in results], "triton": triton,
                               "protocols_shared_a_batch": mixed})
        finally:
            for s in stats:
                s.close()
    return {"schedule": Schedule(args.rate, args.replan_steps).describe(), "duration_s": args.duration,
            "warmup_s": args.warmup, "machine": machine_info(), "points": points}


def table(results: dict[str, Any]) -> str:
    lines = ["| fleet | robots | answers | req/s | p50 ms | p99 ms | misses | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for point in results["points"]:
        lines += [_row(PointResult(**{k: v for k, v in fleet.items()})) for fleet in point["fleets"]]
    lines += ["", "| robots (each fleet) | so100 requests | libero requests | policy_core executions | "
              "average batch | batch sizes (executions) | a batch held both protocols |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for point in results["points"]:
        triton = point["triton"]
        core = triton["policy_core"]
        sizes = ", ".join(f"{size}: {b['executions']}" for size, b in core["batches"].items())
        mixed = {True: "yes (no subset of the batches holds exactly the GR00T requests)",
                 None: "not provable from the counts"}[point["protocols_shared_a_batch"]]
        lines.append(f"| {point['robots']} | {triton['so100']['requests']} | {triton['libero']['requests']} | "
                     f"{core['executions']} | {core['avg_batch']:.1f} | {sizes} | {mixed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "triton-url", "model-repository", "robots", "duration", "warmup", "seed", "output",
              robots=(4, 16), output=Path("bench-results/mixed"))
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--replan-steps", type=int, default=5)
    args = parser.parse_args()
    results = run(args)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=1))
    (args.output / "table.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
