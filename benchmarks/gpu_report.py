"""The GPU run's report (`benchmarks/gpu_fleet.py`): its targets, read from the side-by-side results.json,
and where each millisecond of a robot's round trip goes, from Triton's statistics over the same windows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.report import capacity_table, results_table, time_table
from openpi_triton.loadgen.stats import PointResult

# The targets of issue 13 on the GPU: the front against the reference server (both on the same GPU), the
# front against the core's own batch-64 capacity, and one robot against the bare core in-process.
THROUGHPUT_RATIOS = {16: 5.0, 64: 10.0}
P99_BELOW_REFERENCE_AT = 16
CAPACITY_FRACTION = 0.7
CAPACITY_BATCH = 64
MAX_ONE_ROBOT_OVER_CORE_MS = 1.5


def _points(results: Mapping[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    return {row: {p["robots"]: p for p in data["points"]} for row, data in results["rows"].items()}


def capacity_answers_per_s(capacity: Mapping[str, Any] | None, batch: int) -> float | None:
    entry = (capacity or {}).get("batches", {}).get(str(batch)) or (capacity or {}).get("batches", {}).get(batch)
    return 1000 * batch / entry["run_ms"] if entry else None


def gpu_targets(results: Mapping[str, Any]) -> dict[str, Any]:
    """Each target's reading and whether it is met; a target whose rows did not run is left out."""
    points, out = _points(results), {}
    for robots, ratio_target in THROUGHPUT_RATIOS.items():
        front, reference = points.get("front", {}).get(robots), points.get("reference", {}).get(robots)
        if not (front and reference and reference["throughput"]):
            continue
        entry: dict[str, Any] = {
            "throughput_ratio": front["throughput"] / reference["throughput"], "target_ratio": ratio_target,
            "front_throughput": front["throughput"], "reference_throughput": reference["throughput"],
            "front_p99_ms": front["latency_ms"]["p99"], "reference_p99_ms": reference["latency_ms"]["p99"]}
        met = entry["throughput_ratio"] >= ratio_target
        if robots == P99_BELOW_REFERENCE_AT:
            met = met and entry["front_p99_ms"] < entry["reference_p99_ms"]
        ceiling = capacity_answers_per_s(results.get("core_capacity"), CAPACITY_BATCH)
        if robots == CAPACITY_BATCH and ceiling:
            entry.update(capacity_answers_per_s=ceiling, capacity_fraction=front["throughput"] / ceiling,
                         target_fraction=CAPACITY_FRACTION)
            met = met and entry["capacity_fraction"] >= CAPACITY_FRACTION
        out[f"{robots}_robots"] = {**entry, "met": bool(met)}
    paths = (results.get("paired_one_robot") or {}).get("paths", {})
    if "front" in paths and "core" in paths:
        over = float(np.median(np.subtract(paths["front"]["times_ms"], paths["core"]["times_ms"])))
        out["1_robot"] = {"front_minus_core_ms": over, "front_p50_ms": paths["front"]["ms"]["p50"],
                          "core_p50_ms": paths["core"]["ms"]["p50"], "target_ms": MAX_ONE_ROBOT_OVER_CORE_MS,
                          "pairs": results["paired_one_robot"]["pairs"], "met": over <= MAX_ONE_ROBOT_OVER_CORE_MS}
    return out


def targets_table(targets: Mapping[str, Any]) -> str:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for robots, ratio in THROUGHPUT_RATIOS.items():
        entry = targets.get(f"{robots}_robots")
        if not entry:
            continue
        wanted = f"≥ {ratio:g}x the reference server's throughput"
        measured = (f"{entry['throughput_ratio']:.2f}x ({entry['front_throughput']:.0f} vs "
                    f"{entry['reference_throughput']:.0f} answers/s), p99 {entry['front_p99_ms']:.1f} vs "
                    f"{entry['reference_p99_ms']:.1f} ms")
        if robots == P99_BELOW_REFERENCE_AT:
            wanted += ", lower p99"
        if "capacity_fraction" in entry:
            wanted += f", ≥ {CAPACITY_FRACTION:.0%} of the core's batch-{CAPACITY_BATCH} capacity"
            measured += (f"; {entry['capacity_fraction']:.0%} of {entry['capacity_answers_per_s']:.0f} "
                         "answers/s")
        lines.append(f"| {robots} robots: {wanted} | {measured} | {'yes' if entry['met'] else 'no'} |")
    one = targets.get("1_robot")
    if one:
        lines.append(f"| 1 robot: end-to-end p50 within {MAX_ONE_ROBOT_OVER_CORE_MS:g} ms of the bare core "
                     f"in-process | {one['front_minus_core_ms']:+.2f} ms, median of {one['pairs']} paired rounds "
                     f"(p50 {one['front_p50_ms']:.2f} vs {one['core_p50_ms']:.2f} ms) | "
                     f"{'yes' if one['met'] else 'no'} |")
    return "\n".join(lines)


def _ms(model: Mapping[str, Any], *phases: str) -> float:
    return sum(model["ms_per_request"][phase] for phase in phases)


def milliseconds_table(results: Mapping[str, Any]) -> str:
    """Mean ms per request, robot side down to each ensemble step, per Triton row and fleet size: the
    robot's round trip, what lies outside Triton (front, websocket, gRPC; the direct row has only gRPC),
    the ensemble's own share (its total minus its steps'), and each step's queue and compute."""
    rows = []
    for row, points in _points(results).items():
        for robots, point in sorted(points.items()):
            stats = point.get("triton") or {}
            if not stats:
                continue
            ensemble, *steps = list(stats)
            triton_ms = _ms(stats[ensemble], "success")
            cells = [results["rows"][row]["title"], str(robots), f"{point['latency_ms']['mean']:.2f}",
                     f"{point['latency_ms']['mean'] - triton_ms:.2f}",
                     f"{triton_ms - sum(_ms(stats[s], 'success') for s in steps):.2f}"]
            for step in steps:
                cells += [f"{_ms(stats[step], 'queue'):.2f}",
                          f"{_ms(stats[step], 'compute_input'):.2f} / {_ms(stats[step], 'compute_infer'):.2f} / "
                          f"{_ms(stats[step], 'compute_output'):.2f}", f"{stats[step]['avg_batch']:.1f}"]
            rows.append((steps, cells))
    if not rows:
        return ""
    steps = rows[0][0]
    header = ["row", "robots", "robot round trip", "outside Triton", "ensemble itself"]
    for step in steps:
        header += [f"{step} queue", f"{step} compute in / infer / out", f"{step} batch"]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in rows]
    return "\n".join(lines)


def gpu_markdown(report: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    device, parity, served = report["device"], report["core_parity"], report["triton_parity"]
    rows = {row: [PointResult(**p) for p in data["points"]] for row, data in results["rows"].items()}
    titles = {row: data["title"] for row, data in results["rows"].items()}
    machine = results["machine"]
    gpu = f"{device['gpu']} ({device['nvidia_smi']})" if device.get("nvidia_smi") else device.get("gpu")
    parts = [
        f"GPU fleet run: {gpu or 'no GPU (a CPU rehearsal)'}; PyTorch {device['torch']} (CUDA {device['cuda']}); "
        f"{machine['cpu']}, {machine['cpus']} CPUs. "
        f"Policy core: {parity['core']}, built and captured in {parity['build_and_capture_s']:.1f} s. "
        f"{results['config']['schedule']}; {results['config']['duration_s']:g} s per point after "
        f"{results['config']['warmup_s']:g} s warm-up; {results['config']['format']} observations.",
        "Actions against float32 on the CPU (tolerance "
        f"rtol {parity['tolerance']['rtol']:g}, atol {parity['tolerance']['atol']:g}): in-process core, max "
        + ", ".join(f"batch {b}: {v['max_abs_diff']:.2g}" for b, v in parity["batches"].items())
        + "; through Triton, max " + ", ".join(f"{name}: {v['max_abs_diff']:.2g}" for name, v in
                                               served["formats"].items())
        + f" — {'all within' if parity['ok'] and served['ok'] else 'NOT all within'} tolerance.",
        "Targets:", targets_table(report["targets"]),
        results_table(rows, titles),
        "Where each millisecond goes (mean ms per request; Triton statistics over each window):",
        milliseconds_table(results),
        "Per Triton model (queue + compute ms per request, mean batch) and CPU ms per answer by process:",
        time_table(rows, titles),
    ]
    if results.get("core_capacity"):
        parts += ["The bare core in-process, back to back (host copies included):",
                  capacity_table(results["core_capacity"])]
    if report.get("graph_replay_ms"):
        parts += ["CUDA graph replay alone (CUDA events, no host copies): " + ", ".join(
            f"batch {b}: {ms:.2f} ms" for b, ms in report["graph_replay_ms"].items())]
    return "\n\n".join(parts) + "\n"
