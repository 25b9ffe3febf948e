"""SmolVLA through our server vs the same policy in-process, side by side in one run, at 1, 2 and 4 robots.

    python -m benchmarks.lerobot_smolvla                 # full size (SmolVLM2-500M backbone, ~450M parameters)
    python -m benchmarks.lerobot_smolvla --size tiny     # the tests' tiny model (smoke)

The checkpoint is built offline with LeRobot's classes (random weights, `benchmarks/lerobot_checkpoints.py`).
In-process: LeRobot's preprocessor, `predict_action_chunk` and postprocessor on a batch of N robots' frames
(uint8 HWC cameras converted to float CHW as LeRobot's robots do), back to back: N robots' best case. Served:
`openpi-triton serve --lerobot-policy smolvla=<checkpoint>`, the one command a user runs (its own process, with
its embedded tritonserver); N stock openpi_client robots, each sending its next frame when its answer arrives.

Targets (issue 22): at 1 robot the served latency is within 3% of in-process; at 4 robots the served
throughput is >= 95% of the in-process batch-of-4 capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.arguments import add_flags
from benchmarks.lerobot_checkpoints import FULL_SMOLVLM, TINY_SMOLVLM, RobotFeatures, build_smolvla, build_smolvlm_dir
from openpi_triton.process import free_port, running_child


def observation(rng: np.random.Generator, robot: RobotFeatures, image: tuple[int, int], seed: int) -> dict[str, Any]:
    obs: dict[str, Any] = {f"observation.images.{cam}": rng.integers(0, 256, (*image, 3), dtype=np.uint8)
                           for cam in robot.cameras}
    obs["observation.state"] = rng.normal(size=robot.state_dim).astype(np.float32)
    obs["task"] = "pick up the cube and place it in the box"
    obs["seed"] = seed
    return obs


def in_process(runner: Any, observations: list[dict[str, Any]], robots: int, steps: int) -> dict[str, float]:
    """ms per call of a batch of `robots` frames, back to back (median of `steps` calls)."""
    from openpi_policy.lerobot.batch import stack_requests

    rows = [{key: np.asarray([value], dtype=object if isinstance(value, str) else None)
             for key, value in obs.items() if key != "seed"} for obs in observations[:robots]]
    batch = stack_requests(rows)
    runner(batch, list(range(robots)))  # warm-up
    times = []
    for step in range(steps):
        started = time.perf_counter()
        runner(batch, [step * robots + i for i in range(robots)])
        times.append((time.perf_counter() - started) * 1000)
    call_ms = statistics.median(times)
    return {"call_ms": call_ms, "answers_per_s": robots * 1000 / call_ms}


def served(url: str, observations: list[dict[str, Any]], robots: int, steps: int) -> dict[str, float]:
    """N openpi_client robots in threads, closed loop: latency per answer and answers/s overall."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    clients = [WebsocketClientPolicy(host=url) for _ in range(robots)]
    for client in clients:
        client.infer(dict(observations[0]))  # warm-up, one each
    latencies: list[float] = []
    barrier = threading.Barrier(robots, timeout=600)
    errors: list[BaseException] = []

    def robot(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(steps):
                started = time.perf_counter()
                clients[index].infer(dict(observations[index]))
                latencies.append((time.perf_counter() - started) * 1000)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(robots)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(3600)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"latency_p50_ms": statistics.median(latencies), "answers_per_s": len(latencies) / elapsed}


def run(size: str, robot_counts: list[int], steps: int, image: tuple[int, int], workdir: Path) -> dict[str, Any]:
    from openpi_policy.lerobot.runner import LeRobotRunner

    sizes = FULL_SMOLVLM if size == "full" else TINY_SMOLVLM
    robot = RobotFeatures(cameras=("front", "wrist"), state_dim=6, action_dim=6, image_shape=(3, *image))
    checkpoint = build_smolvla(workdir / "smolvla", robot, vlm_dir=build_smolvlm_dir(workdir / "vlm", sizes),
                               sizes=sizes)
    runner = LeRobotRunner.from_checkpoint(str(checkpoint))
    rng = np.random.default_rng(0)
    observations = [observation(rng, robot, image, seed) for seed in range(max(robot_counts))]
    rows: list[dict[str, Any]] = []
    with serving(checkpoint, workdir) as url:
        for robots in robot_counts:
            local = in_process(runner, observations, robots, steps)
            remote = served(url, observations, robots, steps)
            rows.append({"robots": robots, "in_process": local, "served": remote})
            print(json.dumps(rows[-1]), flush=True)
    return {"size": size, "description": runner.description, "image": list(image), "steps": steps, "rows": rows,
            **verdicts(rows)}


@contextlib.contextmanager
def serving(checkpoint: Path, workdir: Path) -> Iterator[str]:
    """`openpi-triton serve --lerobot-policy` on free ports (only the LeRobot policy: the main repository is
    an empty directory); yields the policy's ws:// URL."""
    port, empty = free_port(), workdir / "no_other_policies"
    empty.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "openpi_triton", "serve", "--lerobot-policy", f"smolvla={checkpoint}",
               "--model-repository", str(empty), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
               "--triton-grpc-port", str(free_port()), "--triton-http-port", str(free_port()),
               "--triton-metrics-port", str(free_port()),
               # A full-size SmolVLA takes seconds per call on a CPU, more than the default per-call limit.
               "--triton-timeout", "600"]
    with running_child("serve", command, f"http://127.0.0.1:{port}/readyz", timeout_s=900):
        yield f"ws://127.0.0.1:{port}/v1/realtime/robot/openpi/smolvla"


def verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows:
        if row["robots"] == 1:
            out["one_robot_overhead"] = row["served"]["latency_p50_ms"] / row["in_process"]["call_ms"] - 1
        if row["robots"] == 4:
            out["four_robot_throughput_ratio"] = row["served"]["answers_per_s"] / row["in_process"]["answers_per_s"]
    return out


def table(result: dict[str, Any]) -> str:
    lines = ["| robots | in-process ms per batch call | in-process answers/s | served p50 ms | served answers/s |",
             "|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        local, remote = row["in_process"], row["served"]
        lines.append(f"| {row['robots']} | {local['call_ms']:.0f} | {local['answers_per_s']:.2f} | "
                     f"{remote['latency_p50_ms']:.0f} | {remote['answers_per_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "size", "robots", size="full", robots=(1, 2, 4))
    parser.add_argument("--steps", type=int, default=5, help="timed answers per robot (and in-process calls)")
    parser.add_argument("--image", default="480x640", help="camera frames, HxW (two cameras)")
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.image.split("x"))
    with tempfile.TemporaryDirectory(prefix="lerobot-bench-") as workdir:
        result = run(args.size, list(args.robots), args.steps, (height, width), Path(workdir))
    print(table(result))
    print({key: value for key, value in result.items() if key not in ("rows",)})
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
