"""Where the front's added latency goes, for one robot and one format's payload.

The front adds one hop (robot -> front) to the direct path (robot -> Triton). Its cost is measured
in layers (tcp, websocket, front: see `benchmarks.overhead_servers`), each a separate server process
answered by one robot in closed loop.

`paired_added_latency` measures the front in place, against a direct Triton call (the side-by-side
benchmark runs it, with and without shared memory between the front and Triton).

    python -m benchmarks.front_overhead [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.overhead_servers import LAYERS, REPLY
from openpi_triton.config import DEFAULT_MODEL_REPOSITORY, DEFAULT_POLICY
from openpi_triton.example_observations import make_observations
from openpi_triton.loadgen.stats import latency_summary
from openpi_triton.loadgen.websocket import WebsocketChannel, encode_observations
from openpi_triton.process import free_port, running_child

# --- the robot side ---

async def _timed_calls(call: Callable[[], Any], calls: int, gap_s: float) -> list[float]:
    for _ in range(5):  # warm-up
        await call()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(gap_s)
    return latencies


async def _tcp_robot(port: int, frame: bytes, calls: int, gap_s: float) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00")  # handshake byte: the server then expects whole frames
    await writer.drain()

    async def call() -> None:
        writer.write(frame)
        await writer.drain()
        await reader.readexactly(len(REPLY))

    try:
        return await _timed_calls(call, calls, gap_s)
    finally:
        writer.close()


async def _websocket_robot(url: str, frames: Sequence[bytes], calls: int, gap_s: float) -> list[float]:
    channel = await WebsocketChannel.open(url, frames)

    async def call() -> None:
        await channel.websocket.send(frames[0])
        await channel.websocket.recv()

    try:
        return await _timed_calls(call, calls, gap_s)
    finally:
        await channel.close()


def measure_layers(model_repository: Path, format_name: str, policy: str, calls: int,
                   gap_s: float = 0.005) -> dict[str, dict[str, float]]:
    """p50/p90/... round trip per layer, in ms."""
    frames = encode_observations(format_name, count=1)
    results = {}
    for layer in LAYERS:
        port = free_port()
        command = [sys.executable, "-m", "benchmarks.overhead_servers", layer, "--port", str(port),
                   "--model-repository", str(model_repository), "--policy", policy,
                   "--frame-bytes", str(len(frames[0]))]
        ready = f"tcp://127.0.0.1:{port}" if layer == "tcp" else f"http://127.0.0.1:{port}/readyz"
        with running_child(f"overhead-{layer}", command, ready):
            if layer == "tcp":
                latencies = asyncio.run(_tcp_robot(port, frames[0], calls, gap_s))
            else:
                latencies = asyncio.run(_websocket_robot(f"ws://127.0.0.1:{port}/", frames, calls, gap_s))
        results[layer] = latency_summary(latencies)
    return results


async def _paired_calls(direct: Any, fronts: dict[str, Any], rounds: int, gap_s: float) -> dict[str, Any]:
    """Each round calls the direct path and every front once, in an order that rotates by round."""
    async def timed(channel: Any) -> float:
        started = time.perf_counter()
        await channel.call()
        return (time.perf_counter() - started) * 1000

    paths = {"direct": direct, **fronts}
    names = list(paths)
    for _ in range(10):  # warm-up of every path
        for channel in paths.values():
            await timed(channel)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)  # no path always follows the same one
        for name in names[shift:] + names[:shift]:
            times[name].append(await timed(paths[name]))
        await asyncio.sleep(gap_s)
    result: dict[str, Any] = {"pairs": rounds, "direct_ms": latency_summary(times["direct"]), "fronts": {}}
    for name in fronts:
        added = np.subtract(times[name], times["direct"])
        result["fronts"][name] = {"front_ms": latency_summary(times[name]),
                                  "added_ms_median": float(np.median(added)),
                                  "added_ms_iqr": [float(q) for q in np.percentile(added, [25, 75])]}
    return result


def paired_added_latency(triton_url: str, front_urls: dict[str, str], policy_name: str, format_name: str,
                         rounds: int = 200, gap_s: float = 0.02, seed: int = 0) -> dict[str, Any]:
    """The front's added latency over a direct Triton call, for one robot, from interleaved calls.

    One robot calls the ensemble directly over gRPC and through each front (e.g. with and without
    shared memory) in turn, with the same observation, so every path sees the same machine state; the
    median of the per-round differences is not moved by the drift between separate measurement
    windows that a shared 2-core machine shows.
    """
    import tritonclient.grpc.aio as grpcclient

    from benchmarks.channels import TritonChannel
    from benchmarks.observations import ensemble_inputs, policy_from_triton

    observation = make_observations(format_name, 1, seed)[0]
    policy = policy_from_triton(triton_url, policy_name)
    frames = encode_observations(format_name, count=1, seed=seed)

    async def run() -> dict[str, Any]:
        client = grpcclient.InferenceServerClient(triton_url)
        fronts = {name: await WebsocketChannel.open(url, frames) for name, url in front_urls.items()}
        try:
            direct = TritonChannel(client, policy, [ensemble_inputs(policy, observation)], 0)
            return await _paired_calls(direct, fronts, rounds, gap_s)
        finally:
            for channel in fronts.values():
                await channel.close()
            await client.close()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--format", default=DEFAULT_POLICY)
    parser.add_argument("--policy", help="default: named like the format")
    parser.add_argument("--calls", type=int, default=500, help="round trips per layer")
    parser.add_argument("--output", type=Path, default=Path("bench-results/front_overhead.json"))
    args = parser.parse_args(argv)
    policy = args.policy or args.format
    results: dict[str, Any] = {"format": args.format, "calls": args.calls,
                               "payload_bytes": len(encode_observations(args.format, count=1)[0]),
                               "layers_ms": measure_layers(args.model_repository, args.format, policy, args.calls)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
