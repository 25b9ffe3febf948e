"""`openpi-triton`: serve, export, check, client, bench.

Every flag of `serve` also reads an environment variable, OPENPI_TRITON_<FLAG> (for example
OPENPI_TRITON_PORT); a flag on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from frontend.settings import Settings, read_api_keys

ENV_PREFIX = "OPENPI_TRITON_"


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def _env(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _add(parser: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any], default: Any, help: str,
         choices: Sequence[str] | None = None) -> None:
    """A flag whose default comes from OPENPI_TRITON_<FLAG> when set, else `default`."""
    env = _env(flag)
    raw = os.environ.get(env)
    if raw is not None:
        try:
            default = kind(raw)
        except ValueError:
            raise CliError(f"environment variable {env}={raw!r} is not a valid {kind.__name__}") from None
        if choices is not None and default not in choices:
            raise CliError(f"environment variable {env}={raw!r} must be one of {', '.join(choices)}")
    parser.add_argument(f"--{flag}", type=kind, default=default, choices=choices,
                        help=f"{help} [env {env}; default: %(default)s]")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    d = Settings()
    p = sub.add_parser("serve", help="run the websocket front (and an embedded tritonserver unless --triton-url)",
                       description="Serve OpenPI policies from Triton to robots over websockets.")
    _add(p, "host", str, d.host, "address to listen on")
    _add(p, "port", int, d.port, "websocket/HTTP port")
    _add(p, "triton-url", str, d.triton_url, "gRPC address of an existing Triton (host:8001); "
         "without it an embedded tritonserver runs the CPU configuration")
    _add(p, "model-repository", Path, d.model_repository, "model repository for the embedded tritonserver")
    _add(p, "triton-grpc-port", int, d.triton_grpc_port, "embedded tritonserver gRPC port")
    _add(p, "triton-http-port", int, d.triton_http_port, "embedded tritonserver HTTP port")
    _add(p, "triton-metrics-port", int, d.triton_metrics_port, "embedded tritonserver metrics port")
    _add(p, "default-policy", str, d.default_policy, "policy served at / and /v1/realtime/robot/openpi")
    _add(p, "api-keys", str, None, "comma-separated API keys; when any key is set, robots must send one")
    _add(p, "api-key-file", Path, None, "file with one API key per line")
    _add(p, "max-frame-bytes", int, d.max_frame_bytes, "largest accepted frame; larger closes with 1009")
    _add(p, "max-connections", int, d.max_connections, "concurrent robots; one more is refused with 1013")
    _add(p, "idle-timeout", float, d.idle_timeout_s, "seconds without a frame before a connection is closed")
    _add(p, "triton-timeout", float, d.triton_timeout_s, "seconds to wait for Triton on each call")
    _add(p, "triton-shared-memory", str, "auto", "pass camera frames to Triton through system shared "
         "memory: auto = on for the embedded tritonserver, off with --triton-url (use on only when Triton "
         "shares this host's /dev/shm)", choices=("auto", "on", "off"))
    _add(p, "log-level", str, d.log_level, "debug, info, warning or error")
    p.set_defaults(run=_serve)


def _settings(args: argparse.Namespace) -> Settings:
    if args.api_key_file is not None and not args.api_key_file.is_file():
        raise CliError(f"API key file {args.api_key_file} does not exist")
    return Settings(
        host=args.host, port=args.port, triton_url=args.triton_url, triton_grpc_port=args.triton_grpc_port,
        triton_http_port=args.triton_http_port, triton_metrics_port=args.triton_metrics_port,
        model_repository=args.model_repository, default_policy=args.default_policy,
        api_keys=read_api_keys(args.api_keys, args.api_key_file), max_frame_bytes=args.max_frame_bytes,
        max_connections=args.max_connections, idle_timeout_s=args.idle_timeout,
        triton_timeout_s=args.triton_timeout, log_level=args.log_level,
        triton_shared_memory=args.triton_shared_memory == "on"
        or (args.triton_shared_memory == "auto" and args.triton_url is None),
    )


def _announce(settings: Settings) -> Callable[[dict[str, Any]], None]:
    def announce(policies: dict[str, Any]) -> None:
        host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        print(f"\nopenpi-triton is serving on ws://{host}:{settings.port}", flush=True)
        if not policies:
            print("  no policies found yet (Triton unreachable?); /readyz says why", flush=True)
        for name, policy in sorted(policies.items()):
            default = "  (default)" if name == settings.default_policy else ""
            print(f"  policy {name!r}{default}: metadata {policy.metadata}", flush=True)
            print(f"    ws://{host}:{settings.port}/v1/realtime/robot/openpi/{name}", flush=True)
        key = ", api_key='<key>'" if settings.auth_enabled else ""
        print("\nConnect a robot with openpi-client:\n"
              "  from openpi_client.websocket_client_policy import WebsocketClientPolicy\n"
              f"  policy = WebsocketClientPolicy(host='{host}', port={settings.port}{key})\n"
              "  actions = policy.infer(observation)['actions']\n", flush=True)
    return announce


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from frontend.app import create_app
    from frontend.embedded_triton import EmbeddedTriton, EmbeddedTritonError
    from frontend.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level)
    triton = None
    if settings.triton_url is None:
        if not (settings.model_repository / "policy_core" / "1" / "model.onnx").exists():
            raise CliError(f"{settings.model_repository}/policy_core/1/model.onnx is missing: "
                           "run `openpi-triton export` (or `make serve`) first")
        triton = EmbeddedTriton(
            [settings.model_repository], http_port=settings.triton_http_port,
            grpc_port=settings.triton_grpc_port, metrics_port=settings.triton_metrics_port,
        )
        print(f"starting tritonserver (CPU configuration) on gRPC port {settings.triton_grpc_port} ...", flush=True)
        try:
            triton.start()
        except EmbeddedTritonError as error:  # a taken port, a missing binary: the message says what to do
            raise CliError(str(error)) from None
        settings = Settings(**{**vars(settings), "triton_url": triton.grpc_url})
    try:
        app = create_app(settings, on_ready=_announce(settings))
        uvicorn.run(app, host=settings.host, port=settings.port, ws_max_size=settings.max_frame_bytes,
                    log_level=settings.log_level, ws_ping_interval=20, ws_ping_timeout=60)
    finally:
        if triton is not None:
            print("stopping tritonserver ...", flush=True)
            triton.stop()


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the reference policy to ONNX (needs the 'export' extra: torch)",
                       description="Export the seeded reference policy to model.onnx.")
    p.add_argument("--output", type=Path, default=Path("model_repository/policy_core/1/model.onnx"))
    p.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same model)")

    def run(args: argparse.Namespace) -> None:
        try:
            from openpi_policy.export import export_reference_policy
        except ImportError as error:
            raise CliError(f"exporting needs torch: pip install 'openpi-triton[export]' ({error})") from None
        try:
            print(export_reference_policy(args.output, args.seed))
        except ModuleNotFoundError as error:
            raise CliError(f"exporting needs torch and onnx: pip install 'openpi-triton[export]' ({error})") from None

    p.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openpi-triton", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _export_parser(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    from frontend.commands import COMMANDS

    return COMMANDS


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except CliError as error:
        print(f"openpi-triton: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # ports and files
        print(f"openpi-triton: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
