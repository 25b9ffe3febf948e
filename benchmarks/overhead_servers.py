"""The servers of the front-overhead layers (see `benchmarks.front_overhead`), each run in its own process:

    python -m benchmarks.overhead_servers LAYER --port P --frame-bytes N [--model-repository R --policy P]

  tcp        raw asyncio TCP: the payload in, 4 bytes back (the floor of any extra hop in Python)
  websocket  uvicorn + Starlette websocket echo (the front's server stack, doing nothing)
  front      the front's app (`create_app`) with a backend that answers instantly: all of the
             front's own work (decode, mapping, encoding, bookkeeping) but no Triton call
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from benchmarks.arguments import add_flags
from benchmarks.instant_backend import InstantBackend
from openpi_triton.config import DEFAULT_POLICY, Settings
from openpi_triton.front.app import create_app
from openpi_triton.front.app import serve as run_app

LAYERS = ("tcp", "websocket", "front")
REPLY = b"\x81\xa2ok\x01"  # msgpack {"ok": 1}: a tiny answer


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


def serve(layer: str, port: int, model_repository: Path, policy: str, frame_bytes: int) -> None:
    if layer == "tcp":
        asyncio.run(_tcp_server(port, frame_bytes))
        return
    # Served as `openpi-triton serve` serves the front (same uvicorn options).
    settings = Settings(host="127.0.0.1", port=port, default_policy=policy, log_level="warning",
                        max_frame_bytes=64 * 2**20)
    if layer == "websocket":
        app = _echo_app()
    else:
        app = create_app(settings, backend=InstantBackend([(model_repository, policy)]))
    run_app(app, settings)

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layer", choices=LAYERS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frame-bytes", type=int, required=True, help="size of the robot's frames (tcp layer)")
    add_flags(parser, "model-repository", "policy", policy=DEFAULT_POLICY)
    args = parser.parse_args(argv)
    serve(args.layer, args.port, args.model_repository, args.policy, args.frame_bytes)


if __name__ == "__main__":
    main()
