"""LeRobot robots: N stock `RobotClient`s (lerobot 0.4.4, unchanged) against `openpi-triton serve
--lerobot-port` (one server, Triton batching every robot) and against LeRobot's own `PolicyServer` (one server
per robot: it serves one at a time), on the same tiny SmolVLA checkpoint.

    python benchmarks/lerobot_grpc.py --robots 1,2,4 --seconds 20

Per run: actions/s (actions the robots performed, all robots), chunks/s (answers received), observation-to-
action latency p50/p99 (from the observation's capture, `TimedObservation.timestamp`, to the chunk's arrival
at the client, taken where the client merges it into its queue), and the servers' memory (RSS of every
server process: ours is the front, tritonserver and its python model's stub; theirs is each PolicyServer).
Robots run at LeRobot's defaults (fps 30, chunk_size_threshold 0.5), actions_per_chunk = the chunk size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.arguments import add_flags  # noqa: E402
from benchmarks.fakearm import SENT, FakeArmConfig  # noqa: E402
from openpi_triton.process import Child, free_port, running_child  # noqa: E402
from openpi_triton.triton.embedded import EmbeddedTriton  # noqa: E402

POLICY = "tiny_smolvla"


def wait_for_port(port: int, child: Child, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.exited():
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{child.name} did not listen on {port} within {timeout_s} s")


def tree_rss(pids: list[int]) -> float:
    """MiB resident in these processes and all their descendants."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
    return total / 2**20


@contextlib.contextmanager
def ours(checkpoint: Path, workdir: Path) -> Iterator[tuple[list[str], list[int]]]:
    """tritonserver with the checkpoint's generated repository and `openpi-triton serve --lerobot-port`; yields
    (a server address per robot slot, the server pids). Robots in one process dial 127.0.0.<i> so that each has
    its own connection, as separate robots do."""
    from openpi_triton.triton.lerobot_repository import LeRobotPolicy, prepare, write_repository

    repository = write_repository(workdir / "repository", [prepare(LeRobotPolicy(POLICY, str(checkpoint)))])
    with EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as triton:
        port, lerobot_port = free_port(), free_port()
        command = [sys.executable, "-m", "openpi_triton", "serve", "--triton-url", triton.grpc_url, "--host",
                   "127.0.0.1", "--port", str(port), "--default-policy", POLICY, "--log-level", "warning",
                   "--lerobot-port", str(lerobot_port), "--lerobot-host", "0.0.0.0", "--lerobot-allow", "127.0.0.0/8",
                   "--triton-shared-memory", "on"]
        with running_child("front", command, f"http://127.0.0.1:{port}/readyz") as front:
            assert triton.pid is not None
            yield [f"127.0.0.{i + 1}:{lerobot_port}" for i in range(8)], [front.pid, triton.pid]


@contextlib.contextmanager
def theirs(robots: int) -> Iterator[tuple[list[str], list[int]]]:
    """LeRobot's PolicyServer, one per robot (at its defaults: fps 30, inference_latency 1/30 s)."""
    with contextlib.ExitStack() as stack:
        started = []
        for _ in range(robots):
            port = free_port()
            command = [sys.executable, "-m", "lerobot.async_inference.policy_server", "--host=127.0.0.1",
                       f"--port={port}"]
            child = Child.start("policy_server", command, env={**os.environ})
            stack.callback(child.stop, 15)
            started.append((port, child))
        for port, child in started:
            wait_for_port(port, child)
        yield [f"127.0.0.1:{port}" for port, _ in started], [child.pid for _, child in started]


def run_robots(addresses: list[str], checkpoint_name: str, seconds: float, warmup_s: float,
               pids: list[int], workdir: Path) -> dict[str, Any]:
    from lerobot.async_inference.robot_client import RobotClient, RobotClientConfig

    latencies: list[float] = []
    chunks = [0]
    lock = threading.Lock()
    measuring = threading.Event()
    clients = []
    for index, address in enumerate(addresses):
        robot = FakeArmConfig(id=f"bench{index}-{time.time_ns()}", calibration_dir=workdir / "calibration")
        client = RobotClient(RobotClientConfig(
            robot=robot, policy_type="smolvla", pretrained_name_or_path=checkpoint_name, actions_per_chunk=10,
            server_address=address, task="pick up the red cube"))
        merge = client._aggregate_action_queues

        def observed(timed_actions: Any, aggregate_fn: Any = None, merge: Any = merge) -> None:
            if measuring.is_set() and timed_actions:
                with lock:
                    latencies.append(time.time() - timed_actions[0].get_timestamp())
                    chunks[0] += 1
            merge(timed_actions, aggregate_fn)

        client._aggregate_action_queues = observed  # observes the chunk's arrival; the client's merge runs as is
        clients.append(client)
    threads = []
    for client in clients:
        if not client.start():
            raise RuntimeError(f"the handshake with {client.server_address} failed")
        threads += [threading.Thread(target=client.receive_actions, daemon=True),
                    threading.Thread(target=client.control_loop, kwargs={"task": client.config.task}, daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(warmup_s)
    keys = [str(client.robot.id) for client in clients]
    before = sum(len(SENT.get(key, [])) for key in keys)
    measuring.set()
    started = time.monotonic()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.monotonic() - started
    performed = sum(len(SENT.get(key, [])) for key in keys) - before
    rss = tree_rss(pids)
    for client in clients:
        client.stop()
    for thread in threads:
        thread.join(10)
    values = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"robots": len(addresses), "actions_per_s": performed / elapsed, "chunks_per_s": chunks[0] / elapsed,
            "latency_p50_ms": float(np.percentile(values, 50)), "latency_p99_ms": float(np.percentile(values, 99)),
            "server_rss_mib": rss, "load_average_1m": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(parser, "robots", robots=(1, 2, 4))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--servers", default="ours,lerobot")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    counts = list(args.robots)
    from benchmarks.lerobot_checkpoints import build_smolvla

    results = []
    with tempfile.TemporaryDirectory(prefix="lerobot-grpc-bench-") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # LeRobot's client and server write ./logs
        checkpoint = build_smolvla(workdir / POLICY)
        servers = args.servers.split(",")
        with contextlib.ExitStack() as stack:
            if "ours" in servers:
                addresses, pids = stack.enter_context(ours(checkpoint, workdir))
            for n in counts:  # ours and theirs back to back at each count: the machine's load drifts
                if "ours" in servers:
                    result = run_robots(addresses[:n], POLICY, args.seconds, args.warmup, pids, workdir)
                    results.append({"server": "openpi-triton (one)", **result})
                    print(json.dumps(results[-1]), flush=True)
                if "lerobot" in servers:
                    with theirs(n) as (their_addresses, their_pids):
                        result = run_robots(their_addresses, str(checkpoint), args.seconds, args.warmup, their_pids,
                                            workdir)
                    results.append({"server": f"LeRobot PolicyServer (x{n})", **result})
                    print(json.dumps(results[-1]), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
