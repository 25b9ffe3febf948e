"""Real-time chunking (RTC) served: chunk-boundary jumps and RTC's cost, with simulated real-time robots.

    python -m benchmarks.rtc                       # the tiny SmolVLA (chunk 20), 1 and 4 robots
    python -m benchmarks.rtc --size full --control-hz 2 --seconds 120   # SmolVLA at its public size

A SmolVLA checkpoint is built offline (random weights, `benchmarks/lerobot_checkpoints.py`) and served as
deployed: an embedded tritonserver with the generated repository and the websocket front in its own process.
Each robot is `openpi_triton.loadgen.realtime.RealtimeRobot`: it executes one action per control period
while its next chunk is computed, measures the delay, and sends `rtc/executed` + `rtc/delay` (remembered
mode) or nothing (RTC off). Per setting:
- boundary jump: max per-joint difference between the last action executed from a chunk and the first
  executed from the next (robot units), mean and max over all boundaries of all robots; for scale, the mean
  step between consecutive actions inside a chunk (with random weights a policy's chunks are not smooth: every
  step is as large as a boundary jump, so this cannot show RTC's gain; a trained policy's can);
- what RTC acts on: how far the new chunk's first `d` actions (d = the measured delay) are from the old
  chunk's actions that ran meanwhile (max per joint, mean over those actions and boundaries);
- RTC's cost: where it runs, the python model's LeRobot call on a batch without and with RTC rows, in
  alternating pairs (median per-pair ratio: robust to the machine's drift); served, each robot's measured
  latency per chunk (p50) and the closed-loop capacity (robots sending their next frame as soon as an answer
  arrives, with and without RTC keys): answers/s.

Targets (issue 25): boundary jumps at least halved with RTC; at most 30% more latency per chunk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.arguments import add_flags
from benchmarks.lerobot_checkpoints import FULL_SMOLVLM, TINY_SMOLVLM, RobotFeatures, build_smolvla, build_smolvlm_dir
from benchmarks.servers import front
from openpi_triton.loadgen.realtime import RealtimeRobot, lerobot_observer
from openpi_triton.process import free_port
from openpi_triton.triton.embedded import EmbeddedTriton


def in_threads(robot: Callable[[int], None], robots: int, join_s: float) -> None:
    """`robot(i)` for each of `robots` robots, each in its own thread; the first robot's error is raised."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            robot(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(robots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join_s)
    if errors:
        raise errors[0]


def control_loops(url: str, robots: int, mode: str, control_hz: float, seconds: float) -> list[Any]:
    """`robots` real-time robots at once for `seconds`; their reports."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    clients = [WebsocketClientPolicy(host=url) for _ in range(robots)]
    reports: list[Any] = [None] * robots

    def robot(index: int) -> None:
        observe = lerobot_observer(clients[index].get_server_metadata(), seed=index)
        reports[index] = RealtimeRobot(clients[index], observe, control_hz, mode).run(seconds)

    in_threads(robot, robots, seconds + 900)
    return reports


def pooled(robots: int, mode: str, reports: list[Any]) -> dict[str, Any]:
    """The reports of every round of one setting, pooled."""
    jumps = np.concatenate([r.jumps for r in reports])
    inner = np.concatenate([r.inner_steps for r in reports])
    latencies = np.concatenate([r.latencies_ms[1:] for r in reports])  # the first chunk is no boundary
    return {"robots": robots, "mode": mode, "boundaries": int(jumps.size),
            "jump_mean": float(jumps.mean()), "jump_max": float(jumps.max()), "inner_step_mean": float(inner.mean()),
            "follow_error_mean": float(np.mean([e for r in reports for e in r.follow_errors])),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "delay_steps_mean": float(np.mean([d for r in reports for d in r.delays[1:]])),
            "starved_steps": sum(r.starved_steps for r in reports),
            "refused": sum(len(r.errors) for r in reports)}


def capacity(url: str, robots: int, rtc: bool, steps: int, metadata: dict[str, Any]) -> tuple[list[float], float]:
    """Closed loop: answers/s and latency p50 of `robots` robots sending back to back, with RTC (explicit
    leftover of their previous answer, delay 2) or without."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    clients = [WebsocketClientPolicy(host=url) for _ in range(robots)]
    observers = [lerobot_observer(metadata, seed=i) for i in range(robots)]
    latencies: list[float] = []
    began: list[float] = []
    barrier = threading.Barrier(robots, timeout=600, action=lambda: began.append(time.perf_counter()))

    def robot(index: int) -> None:
        chunk = clients[index].infer(observers[index](None))["actions"]
        barrier.wait()
        for _ in range(steps):
            frame = observers[index](chunk[4])
            if rtc:
                frame.update({"rtc/executed": 4, "rtc/delay": 2})
            started = time.perf_counter()
            chunk = clients[index].infer(frame)["actions"]
            latencies.append((time.perf_counter() - started) * 1000)

    in_threads(robot, robots, 3600)
    return latencies, time.perf_counter() - began[0]  # from when every robot had its first chunk


def paired_cost(checkpoint: Path, robots: int, pairs: int) -> dict[str, float]:
    """RTC's compute cost where it runs (the python model's LeRobot call), robust to the machine's drift:
    `pairs` times, one batch of `robots` rows without RTC then the same batch with RTC on every row (leftover
    of 10 actions, delay 3), back to back; the median of the per-pair time ratios."""
    import torch

    from openpi_policy.lerobot.runner import LeRobotRunner

    runner = LeRobotRunner.from_checkpoint(str(checkpoint))
    config = runner.loaded.info.config
    robot_images = {name: torch.rand(robots, *feature.shape) for name, feature in config.input_features.items()
                    if feature.type.value == "VISUAL"}
    state = {name: torch.randn(robots, *feature.shape) for name, feature in config.input_features.items()
             if feature.type.value == "STATE"}
    action_dim = config.output_features["action"].shape[-1]
    chunk = runner.chunk_size
    leftovers = np.random.default_rng(0).normal(size=(robots, chunk, action_dim)).astype(np.float32)
    rtc = (leftovers, [min(10, chunk)] * robots, [3] * robots)
    ratios, plain_ms, rtc_ms = [], [], []
    for pair in range(pairs + 1):
        times = []
        for guided in (None, rtc):
            batch = {**robot_images, **state, "task": ["pick up the red cube"] * robots}
            started = time.perf_counter()
            runner.run_batch(batch, list(range(robots)), guided)
            times.append((time.perf_counter() - started) * 1000)
        if pair:  # the first pair warms up
            plain_ms.append(times[0])
            rtc_ms.append(times[1])
            ratios.append(times[1] / times[0])
    return {"robots": robots, "pairs": pairs, "plain_ms_p50": statistics.median(plain_ms),
            "rtc_ms_p50": statistics.median(rtc_ms), "ratio_p50": statistics.median(ratios)}


def run(size: str, robot_counts: list[int], control_hz: float, seconds: float, steps: int, chunk: int,
        workdir: Path, rounds: int = 3) -> dict[str, Any]:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from openpi_triton.triton.lerobot_repository import LeRobotPolicy, prepare, write_repository

    sizes = FULL_SMOLVLM if size == "full" else TINY_SMOLVLM
    robot = RobotFeatures(cameras=("front", "wrist"), state_dim=6, action_dim=6)
    checkpoint = build_smolvla(workdir / "smolvla", robot, vlm_dir=build_smolvlm_dir(workdir / "vlm", sizes),
                               sizes=sizes, chunk_size=chunk, n_action_steps=chunk)
    repository = write_repository(workdir / "repository", [prepare(LeRobotPolicy("smolvla", str(checkpoint)))])
    costs = [paired_cost(checkpoint, robots, pairs=40) for robots in robot_counts]
    print(json.dumps(costs), flush=True)
    loops, capacities = [], []
    with EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                        startup_timeout_s=900) as triton, front(triton.grpc_url, "smolvla", True) as (url, _):
        metadata = WebsocketClientPolicy(host=url).get_server_metadata()
        for robots in robot_counts:
            # Settings alternate in short rounds: this shared machine's load drifts by more than RTC costs.
            reports: dict[str, list[Any]] = {"off": [], "remembered": []}
            timed: dict[bool, tuple[list[float], float]] = {False: ([], 0.0), True: ([], 0.0)}
            for _ in range(rounds):
                for mode in reports:
                    reports[mode] += control_loops(url, robots, mode, control_hz, seconds / rounds)
                for rtc in (False, True):
                    latencies, elapsed = capacity(url, robots, rtc, max(1, steps // rounds), metadata)
                    timed[rtc] = (timed[rtc][0] + latencies, timed[rtc][1] + elapsed)
            for mode, mode_reports in reports.items():
                loops.append(pooled(robots, mode, mode_reports))
                print(json.dumps(loops[-1]), flush=True)
            for rtc, (latencies, elapsed) in timed.items():
                capacities.append({"robots": robots, "rtc": rtc, "latency_p50_ms": statistics.median(latencies),
                                   "answers_per_s": len(latencies) / elapsed})
                print(json.dumps(capacities[-1]), flush=True)
    return {"size": size, "chunk_size": chunk, "control_hz": control_hz, "seconds": seconds, "rounds": rounds,
            "rtc": metadata["rtc"],
            "in_process_cost": costs, "loops": loops, "capacity": capacities, **verdicts(loops, capacities)}


def verdicts(loops: list[dict[str, Any]], capacities: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for robots in sorted({row["robots"] for row in loops}):
        off = next(r for r in loops if r["robots"] == robots and r["mode"] == "off")
        on = next(r for r in loops if r["robots"] == robots and r["mode"] == "remembered")
        plain = next(r for r in capacities if r["robots"] == robots and not r["rtc"])
        rtc = next(r for r in capacities if r["robots"] == robots and r["rtc"])
        out[f"robots_{robots}"] = {
            "jump_mean_ratio": on["jump_mean"] / off["jump_mean"], "jump_max_ratio": on["jump_max"] / off["jump_max"],
            "follow_error_ratio": on["follow_error_mean"] / off["follow_error_mean"],
            "loop_latency_ratio": on["latency_p50_ms"] / off["latency_p50_ms"],
            "closed_loop_latency_ratio": rtc["latency_p50_ms"] / plain["latency_p50_ms"],
            "throughput_ratio": rtc["answers_per_s"] / plain["answers_per_s"]}
    return out


def tables(result: dict[str, Any]) -> str:
    lines = ["| robots | RTC | boundaries | jump mean | jump max | step inside a chunk | new chunk vs what ran "
             "meanwhile | latency p50 ms | delay (steps) | starved steps |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["loops"]:
        lines.append(f"| {r['robots']} | {r['mode']} | {r['boundaries']} | {r['jump_mean']:.3f} | {r['jump_max']:.3f} "
                     f"| {r['inner_step_mean']:.3f} | {r['follow_error_mean']:.3f} | {r['latency_p50_ms']:.0f} | "
                     f"{r['delay_steps_mean']:.1f} | {r['starved_steps']} |")
    lines += ["", "| robots | LeRobot call without RTC, p50 ms | with RTC on every row, p50 ms | "
              "median per-pair ratio |", "|---:|---:|---:|---:|"]
    for c in result["in_process_cost"]:
        lines.append(f"| {c['robots']} | {c['plain_ms_p50']:.0f} | {c['rtc_ms_p50']:.0f} | {c['ratio_p50']:.3f} |")
    lines += ["", "| robots | RTC | closed-loop latency p50 ms | answers/s |", "|---:|---|---:|---:|"]
    for r in result["capacity"]:
        lines.append(f"| {r['robots']} | {'on' if r['rtc'] else 'off'} | {r['latency_p50_ms']:.0f} | "
                     f"{r['answers_per_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "size", "robots", size="tiny", robots=(1, 4))
    parser.add_argument("--control-hz", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="per control-loop setting, over all rounds")
    parser.add_argument("--steps", type=int, default=15, help="closed-loop answers per robot, over all rounds")
    parser.add_argument("--chunk", type=int, default=20, help="the checkpoint's chunk size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of RTC off / on per setting")
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rtc-bench-") as workdir:
        result = run(args.size, list(args.robots), args.control_hz, args.seconds, args.steps,
                     args.chunk, Path(workdir), args.rounds)
    print(tables(result))
    print(json.dumps({key: value for key, value in result.items() if key not in ("loops", "capacity")}, indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

