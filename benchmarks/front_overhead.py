"""Where the front's added latency goes, for one robot and one format's payload.

The front adds one hop (robot -> front) to the direct path (robot -> Triton). Its cost is measured
in layers, each a separate server process answered by one robot in closed loop:

  tcp        raw asyncio TCP: the payload in, 4 bytes back (the floor of any extra hop in Python)
  websocket  uvicorn + Starlette websocket echo (the front's server stack, doing nothing)
  front      the front's app (`create_app`) with a backend that answers instantly: all of the
             front's own work (decode, mapping, encoding, bookkeeping) but no Triton call

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

from benchmarks import servers
from benchmarks.loadgen import WebsocketChannel, encode_observations
from benchmarks.observations import DEFAULT_MODEL_REPOSITORY, make_observations, policy_from_repository
from benchmarks.stats import latency_summary
from frontend.embedded_triton import free_port

LAYERS = ("tcp", "websocket", "front")
REPLY = b"\x81\xa2ok\x01"  # msgpack {"ok": 1}: a tiny answer


# --- servers (run in their own process: `python -m benchmarks.front_overhead --serve LAYER`) ---

async def _tcp_server(port: int, frame_bytes: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with_header = False
        while True:
            try:
                await reader.readexactly(frame_bytes if with_header else 1)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            with_header = True
            writer.write(REPLY)
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _echo_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_bytes(b"\x80")  # metadata: {}
        while (await websocket.receive())["type"] != "websocket.disconnect":
            await websocket.send_bytes(REPLY)

    async def ready(request: Any) -> PlainTextResponse:
        return PlainTextResponse("OK\n")

    return Starlette(routes=[WebSocketRoute("/", echo), Route("/readyz", ready)])


class InstantBackend:
    """Stands in for `TritonBackend`: the policy from the repository, zeros as actions, no waiting."""

    def __init__(self, model_repository: Path, policy: str) -> None:
        self.policy_ = policy_from_repository(model_repository, policy)
        self.outputs = _output_zeros(model_repository, policy)
        self.config_errors: dict[str, str] = {}

    @property
    def policies(self) -> dict[str, Any]:
        return {self.policy_.name: self.policy_}

    async def discover(self, force: bool = False) -> dict[str, Any]:
        return self.policies

    async def policy(self, name: str) -> Any:
        return self.policies.get(name)

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        return True, "ready"

    async def infer(self, policy: Any, tensors: Any, request_id: str, sequence: Any = None) -> dict[str, np.ndarray]:
        return self.outputs

    async def close(self) -> None:
        return None


def _output_zeros(model_repository: Path, policy: str) -> dict[str, np.ndarray]:
    from google.protobuf.json_format import MessageToDict

    from frontend.policies import TRITON_DTYPES
    from openpi_policy.reference_pipeline import read_model_config

    config = MessageToDict(read_model_config(Path(model_repository) / policy / "config.pbtxt"),
                           preserving_proto_field_name=True)
    batch = [1] if int(config.get("max_batch_size", 0)) > 0 else []
    return {o["name"]: np.zeros(batch + [max(int(d), 1) for d in o.get("dims", [])],
                                TRITON_DTYPES[o["data_type"].removeprefix("TYPE_")])
            for o in config.get("output", [])}


def _serve(layer: str, port: int, model_repository: Path, policy: str, frame_bytes: int) -> None:
    if layer == "tcp":
        asyncio.run(_tcp_server(port, frame_bytes))
        return
    import uvicorn

    if layer == "websocket":
        app = _echo_app()
    else:
        from frontend.app import create_app
        from frontend.settings import Settings

        settings = Settings(triton_url="unused:1", port=port, default_policy=policy)
        app = create_app(settings, backend=InstantBackend(model_repository, policy))  # type: ignore[arg-type]
    # The options `openpi-triton serve` runs uvicorn with (frontend/cli.py).
    uvicorn.run(app, host="127.0.0.1", port=port, ws_max_size=64 * 2**20, log_level="warning",
                ws_ping_interval=20, ws_ping_timeout=60)


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
        command = [sys.executable, "-m", "benchmarks.front_overhead", "--serve", layer, "--port", str(port),
                   "--model-repository", str(model_repository), "--policy", policy,
                   "--frame-bytes", str(len(frames[0]))]
        ready = f"tcp://127.0.0.1:{port}" if layer == "tcp" else f"http://127.0.0.1:{port}/readyz"
        with servers.server_process(f"overhead-{layer}", command, ready):
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
    parser.add_argument("--format", default="libero")
    parser.add_argument("--policy", help="default: named like the format")
    parser.add_argument("--calls", type=int, default=500, help="round trips per layer")
    parser.add_argument("--output", type=Path, default=Path("bench-results/front_overhead.json"))
    parser.add_argument("--serve", choices=LAYERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frame-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    policy = args.policy or args.format
    if args.serve:
        _serve(args.serve, args.port, args.model_repository, policy, args.frame_bytes)
        return
    results: dict[str, Any] = {"format": args.format, "calls": args.calls,
                               "payload_bytes": len(encode_observations(args.format, count=1)[0]),
                               "layers_ms": measure_layers(args.model_repository, args.format, policy, args.calls)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
