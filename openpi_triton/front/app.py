"""The Starlette app: OpenPI websocket routes in front of a policy backend, plus health, readiness,
metrics and the policy list (and, with a GR00T port, the GR00T endpoint for its lifetime); and the uvicorn
options it is served with."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette import status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from openpi_triton.config import GRACEFUL_SHUTDOWN_S, WS_PING_INTERVAL_S, WS_PING_TIMEOUT_S, Settings
from openpi_triton.front.auth import is_authorized
from openpi_triton.front.drain import Drain, DrainingServer
from openpi_triton.front.lingering import lingering_protocol
from openpi_triton.front.live_sessions import LiveSessions
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.readiness import Readiness
from openpi_triton.front.session import RobotConnection
from openpi_triton.triton.backend import Backend
from openpi_triton.triton.health import Health
from openpi_triton.triton.policy import Policy
from openpi_triton.triton.replicas import ReplicaPool

log = logging.getLogger("openpi_triton.front")

def create_app(settings: Settings, backend: Backend | None = None,
               on_ready: Callable[[dict[str, Policy]], None] | None = None, health: Health | None = None) -> Starlette:
    """The ASGI app, on the Triton replicas of `settings.triton_url` unless a `backend` is given. `on_ready`
    is called once with the policies found at start-up; `health` is shared with the supervisor of an
    embedded tritonserver."""
    pool = None
    if backend is None:
        if settings.triton_url is None:
            raise ValueError("the front needs a Triton URL (settings.triton_url) or a backend")
        backend = pool = ReplicaPool(
            settings.triton_url, settings.triton_timeout_s, settings.shares_memory(embedded=False), health=health,
            resolve_interval_s=settings.triton_resolve_interval_s, check_interval_s=settings.triton_check_interval_s)
    metrics = FrontMetrics(getattr(backend, "health", health), pool)
    if pool is not None:
        pool.on_call = metrics.replica_call
        pool.on_leave = metrics.forget_replica
    drain = Drain()
    readiness = Readiness(backend, settings.default_policy)
    open_connections = 0
    live_sessions = LiveSessions(settings.max_live_sessions)  # sessions of stateful policies, server-wide

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gr00t = None
        lerobot = None
        # Whatever fails on the way up (a taken GR00T port), what started is stopped and the backend closed:
        # no watcher task or channel outlives the app.
        try:
            if pool is not None:
                await pool.start()
            policies = await backend.discover(force=True)
            await readiness.start()
            if settings.gr00t_port is not None:  # GR00T clients on the same backend, so batched with the robots
                from openpi_triton.front.gr00t.server import Gr00tServer  # needs pyzmq: the 'gr00t' extra

                gr00t = Gr00tServer(settings, backend, metrics, drain)
                await gr00t.start()
            app.state.gr00t = gr00t
            if settings.lerobot_port is not None:  # LeRobot robots (gRPC), batched with the others
                from openpi_triton.front.lerobot.server import LeRobotServer

                lerobot = LeRobotServer(settings, backend, metrics, drain)
                await lerobot.start()
            app.state.lerobot = lerobot
            if on_ready is not None:
                on_ready(policies)
            yield
        finally:
            try:
                await readiness.stop()
                if lerobot is not None:
                    await lerobot.stop()
                if gr00t is not None:
                    await gr00t.stop()
            finally:
                await backend.close()

    async def refuse(websocket: WebSocket, http_status: int, reason: str, metric: str) -> None:
        metrics.rejected.labels(metric).inc()
        log.info("connection refused", extra={"status": http_status, "reason": reason})
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(PlainTextResponse(reason + "\n", status_code=http_status))
        else:
            await websocket.close(status.WS_1008_POLICY_VIOLATION, reason[:120])

    async def robot(websocket: WebSocket) -> None:
        nonlocal open_connections
        name = websocket.path_params.get("policy") or settings.default_policy
        if settings.auth_enabled and not is_authorized(websocket.headers.get("authorization"), settings.api_keys):
            await refuse(websocket, 401, "missing or wrong API key: send 'Authorization: Api-Key <key>'", "auth")
            return
        if drain.draining:
            await refuse(websocket, 503, "server shutting down; connect to another replica or retry", "draining")
            return
        policy = await backend.policy(name)
        if policy is None:
            known = ", ".join(sorted(backend.policies)) or "none (is Triton up?)"
            await refuse(websocket, 404, f"unknown policy {name!r}; available policies: {known}", "unknown_policy")
            return
        if open_connections >= settings.max_connections:
            metrics.rejected.labels("capacity").inc()
            await websocket.accept()
            await websocket.close(status.WS_1013_TRY_AGAIN_LATER,
                                  f"server at its limit of {settings.max_connections} robots")
            return
        open_connections += 1
        metrics.connections.labels(name, "openpi").inc()
        drain.opened()
        try:
            await websocket.accept()
            await RobotConnection(websocket, policy, backend, settings, metrics, drain, live_sessions).run()
        except WebSocketDisconnect:
            pass
        finally:
            open_connections -= 1
            metrics.connections.labels(name, "openpi").dec()
            drain.closed()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("OK\n")

    async def readyz(request: Request) -> Response:
        """From the state `readiness` keeps: never a call to Triton here."""
        if drain.draining:
            return PlainTextResponse("shutting down: draining robot connections\n", status_code=503)
        name = request.query_params.get("policy")
        if name is not None and name not in readiness.names():
            known = ", ".join(sorted(backend.policies)) or "none (is Triton up?)"
            return PlainTextResponse(f"unknown policy {name!r}; available policies: {known}\n", status_code=404)
        state = readiness.front() if name is None else readiness.of(name)
        return PlainTextResponse(state.reason + "\n", status_code=200 if state.ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def list_policies(request: Request) -> Response:
        policies = await backend.discover()
        return JSONResponse({
            "default": settings.default_policy,
            "policies": [policy.describe() for _, policy in sorted(policies.items())],
        })

    routes = [
        WebSocketRoute("/", robot),
        WebSocketRoute("/v1/realtime/robot/openpi", robot),
        WebSocketRoute("/v1/realtime/robot/openpi/{policy}", robot),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/policies", list_policies),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    app.state.metrics = metrics
    app.state.drain = drain
    app.state.readiness = readiness
    return app


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How the front is served: uvicorn with websocket limits and keep-alive pings from `settings`."""
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "ws_max_size": settings.max_frame_bytes,
        "log_level": settings.log_level, "ws_ping_interval": WS_PING_INTERVAL_S,
        "ws_ping_timeout": WS_PING_TIMEOUT_S, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "ws": lingering_protocol(settings), **overrides,
    }
    return uvicorn.Config(app, **options)


def front_server(app: Any, settings: Settings, **overrides: Any) -> DrainingServer:
    """uvicorn serving `app`, whose shutdown drains the robot connections of an app from `create_app`
    first (`--drain-timeout`)."""
    drain = getattr(getattr(app, "state", None), "drain", None) or Drain()
    return DrainingServer(uvicorn_config(app, settings, **overrides), drain, settings.drain_timeout_s)


def serve(app: Any, settings: Settings) -> None:
    """Run `app` until interrupted (Ctrl-C, SIGTERM), drain, and return.

    uvicorn re-raises a SIGTERM once it has shut down, with the handler it found: the default one would
    end the process there, before the caller stops tritonserver. A handler that does nothing makes this
    return instead (and keeps a second SIGTERM from cutting that clean-up short)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    front_server(app, settings).run()
