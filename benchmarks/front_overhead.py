"""Where the front's added latency goes, for one robot and one format's payload.

The front adds one hop (robot -> front) to the direct path (robot -> Triton). Its cost is measured
in layers (tcp, websocket, front: see `benchmarks.overhead_servers`), each a separate server process
answered by one robot in closed loop.

`paired_one_robot` measures the front in place, against a direct Triton call, the reference server
and the bare core, from interleaved calls (the side-by-side benchmark runs it).

    python -m benchmarks.front_overhead [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.arguments import add_flags
from benchmarks.overhead_servers import LAYERS, REPLY
from openpi_policy.core import Core
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


async def _paired_calls(paths: dict[str, Any], rounds: int, gap_s: float) -> dict[str, Any]:
    """Each round calls every path once, in an order that rotates by round; the first path is the
    baseline that the others' per-round differences are taken against."""
    async def timed(channel: Any) -> float:
        started = time.perf_counter()
        await channel.call()
        return (time.perf_counter() - started) * 1000

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
    baseline = times[names[0]]
    result: dict[str, Any] = {"pairs": rounds, "baseline": names[0], "paths": {}}
    for name in names:
        minus = np.subtract(times[name], baseline)
        result["paths"][name] = {"ms": latency_summary(times[name]),
                                 "minus_baseline_ms_median": float(np.median(minus)),
                                 "minus_baseline_ms_iqr": [float(q) for q in np.percentile(minus, [25, 75])],
                                 "times_ms": times[name]}
    return result


def paired_one_robot(triton_url: str, websocket_urls: dict[str, str], policy_name: str, format_name: str,
                     rounds: int = 200, gap_s: float = 0.02, seed: int = 0,
                     core: Core | None = None) -> dict[str, Any]:
    """One robot's round trip on every path, from interleaved calls: the ensemble directly over gRPC
    (`direct`, the baseline), each websocket server (fronts with and without shared memory, the
    reference server) and, given one, the bare policy core in this process (`core`, batch 1).

    Every round calls each path once with the same observation, so every path sees the same machine
    state; the per-round differences are not moved by the drift between separate measurement windows
    that a shared 2-core machine shows.
    """
    import tritonclient.grpc.aio as grpcclient

    from benchmarks.channels import CoreChannel, TritonChannel
    from benchmarks.observations import ensemble_inputs, policy_from_triton
    from openpi_policy.export import example_inputs

    observation = make_observations(format_name, 1, seed)[0]
    policy = policy_from_triton(triton_url, policy_name)
    frames = encode_observations(format_name, count=1, seed=seed)

    async def run() -> dict[str, Any]:
        client = grpcclient.InferenceServerClient(triton_url)
        servers = {name: await WebsocketChannel.open(url, frames) for name, url in websocket_urls.items()}
        try:
            paths: dict[str, Any] = {"direct": TritonChannel(client, policy, [ensemble_inputs(policy, observation)], 0),
                                     **servers}
            if core is not None:
                with ThreadPoolExecutor(max_workers=1) as executor:
                    paths["core"] = CoreChannel(core, example_inputs(1), executor)
                    return await _paired_calls(paths, rounds, gap_s)
            return await _paired_calls(paths, rounds, gap_s)
        finally:
            for channel in servers.values():
                await channel.close()
            await client.close()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "model-repository", "format", "policy", "output",
              output=Path("bench-results/front_overhead.json"))
    parser.add_argument("--calls", type=int, default=500, help="round trips per layer")
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
