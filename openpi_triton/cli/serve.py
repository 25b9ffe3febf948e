"""`openpi-triton serve`: the websocket front, and an embedded tritonserver unless --triton-url.

Every flag also reads OPENPI_TRITON_<FLAG> (for example OPENPI_TRITON_PORT); a flag on the command
line wins over the variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from openpi_triton.cli.lerobot import add_lerobot_flags, remove_repository, write_lerobot_repository
from openpi_triton.cli.options import CliError, add_env_flag, add_env_switch
from openpi_triton.config import (
    CPU_CONFIG_NAME,
    GPU_TORCH_CONFIG_NAME,
    GR00T_GENERATIONS,
    GR00T_PORT,
    LEROBOT_PORT,
    Settings,
    core_onnx_path,
    read_api_keys,
)
from openpi_triton.process import port_is_free
from openpi_triton.triton.addresses import AddressError, parse_targets

# --triton-shared-memory -> Settings.triton_shared_memory (None: on for the embedded tritonserver only)
SHARED_MEMORY_SWITCH = {"auto": None, "on": True, "off": False}


def register(sub: argparse._SubParsersAction) -> None:
    d = Settings()
    p = sub.add_parser("serve", help="run the websocket front (and an embedded tritonserver unless --triton-url)",
                       description="Serve OpenPI policies from Triton to robots over websockets.")
    add_env_flag(p, "host", str, d.host, "address to listen on")
    add_env_flag(p, "port", int, d.port, "websocket/HTTP port")
    add_env_flag(p, "triton-url", str, d.triton_url, "gRPC address of an existing Triton (host:8001), or "
                 "several separated by commas; a name stands for every address it resolves to (a Kubernetes "
                 "headless Service). Without it an embedded tritonserver runs --model-config-name")
    add_env_flag(p, "triton-resolve-interval", float, d.triton_resolve_interval_s,
                 "seconds between DNS lookups of the names in --triton-url (Triton replicas come and go)")
    add_env_flag(p, "triton-check-interval", float, d.triton_check_interval_s,
                 "seconds between readiness checks of each Triton replica")
    add_env_flag(p, "model-repository", Path, d.model_repository, "model repository for the embedded tritonserver")
    add_env_flag(p, "model-config-name", str, d.model_config_name, "config variant the embedded tritonserver loads "
                 f"(configs/<name>.pbtxt): {CPU_CONFIG_NAME} (ONNX Runtime on the CPU) or {GPU_TORCH_CONFIG_NAME} "
                 "(the policy core in PyTorch on the GPU, float16, CUDA graphs)")
    add_env_flag(p, "tritonserver", Path, d.tritonserver, "directory of the tritonserver to embed, laid out like "
                 "the nvidia-pytriton wheel's (bin/, backends/, lib/), such as the GPU host kit's "
                 "(benchmarks/gpu_kit.py); unset: the wheel's")
    add_env_flag(p, "triton-grpc-port", int, d.triton_grpc_port, "embedded tritonserver gRPC port")
    add_env_flag(p, "triton-http-port", int, d.triton_http_port, "embedded tritonserver HTTP port")
    add_env_flag(p, "triton-metrics-port", int, d.triton_metrics_port, "embedded tritonserver metrics port")
    add_env_flag(p, "default-policy", str, d.default_policy, "policy served at / and /v1/realtime/robot/openpi")
    add_env_flag(p, "api-keys", str, None, "comma-separated API keys; when any key is set, robots must send one")
    add_env_flag(p, "api-key-file", Path, None, "file with one API key per line")
    add_env_flag(p, "max-frame-bytes", int, d.max_frame_bytes, "largest accepted frame; larger closes with 1009")
    add_env_flag(p, "max-connections", int, d.max_connections, "concurrent robots; one more is refused with 1013")
    add_env_flag(p, "max-live-sessions", int, d.max_live_sessions,
                 "live sessions of stateful policies; one more is refused with an error text until one ends")
    add_env_flag(p, "idle-timeout", float, d.idle_timeout_s, "seconds without a frame before a connection is closed")
    add_env_flag(p, "triton-timeout", float, d.triton_timeout_s, "seconds to wait for Triton on each call")
    default_switch = next(word for word, value in SHARED_MEMORY_SWITCH.items() if value is d.triton_shared_memory)
    add_env_flag(p, "triton-shared-memory", str, default_switch, "pass camera frames to Triton through system shared "
                 "memory: auto = on for the embedded tritonserver, off with --triton-url (use on only when "
                 "Triton shares this host's /dev/shm)", choices=tuple(SHARED_MEMORY_SWITCH))
    add_env_flag(p, "drain-timeout", float, d.drain_timeout_s, "on shutdown (SIGTERM, Ctrl-C), seconds that robots' "
                 "in-flight inferences get to be answered before their connections close with 1012")
    add_env_flag(p, "triton-restart-delay", float, d.triton_restart_delay_s, "seconds before restarting an "
                 "embedded tritonserver that died soon after its start or failed to start; doubles each time")
    add_env_flag(p, "triton-restart-max-delay", float, d.triton_restart_max_delay_s,
                 "the longest wait between embedded tritonserver restarts")
    add_env_flag(p, "log-level", str, d.log_level, "debug, info, warning or error")
    add_env_flag(p, "gr00t-port", int, d.gr00t_port, f"also serve Isaac GR00T clients (ZeroMQ) on this port, "
                 f"GR00T's default being {GR00T_PORT}; off unless set (needs the 'gr00t' extra: pyzmq)")
    add_env_flag(p, "gr00t-policy", str, d.gr00t_policy, "the policy GR00T clients get (a policy with a "
                 "gr00t_modality_config parameter)")
    add_env_flag(p, "gr00t-modality-form", str, d.gr00t_modality_form, "ModalityConfig in get_modality_config "
                 "replies as GR00T N1.5 clients read it (a JSON string, prefixed keys) or N1.6 clients (a map, bare "
                 "keys); each crashes on the other's", choices=GR00T_GENERATIONS)
    add_env_switch(p, "gr00t-allow-kill", "let a GR00T client's `kill` request stop the server (as SIGTERM does); "
                   "refused otherwise")
    add_env_flag(p, "lerobot-port", int, d.lerobot_port, "also serve LeRobot robots (async inference RobotClient, "
                 f"gRPC) on this port, LeRobot's default being {LEROBOT_PORT}; off unless set")
    add_env_flag(p, "lerobot-host", str, d.lerobot_host, "address the LeRobot endpoint listens on; beyond loopback "
                 "it needs --lerobot-allow (LeRobot's client sends no credentials)")
    add_env_flag(p, "lerobot-allow", str, None, "client networks allowed to call the LeRobot endpoint, CIDRs "
                 "separated by commas (10.8.0.0/24,192.168.1.7); loopback is always allowed")
    add_lerobot_flags(p)
    p.set_defaults(run=_serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.api_key_file is not None and not args.api_key_file.is_file():
        raise CliError(f"API key file {args.api_key_file} does not exist")
    if args.triton_url is not None:
        try:
            parse_targets(args.triton_url)
        except AddressError as error:
            raise CliError(f"--triton-url: {error}") from None
    for flag, value in (("--triton-resolve-interval", args.triton_resolve_interval),
                        ("--triton-check-interval", args.triton_check_interval)):
        if not value > 0:
            raise CliError(f"{flag} must be a positive number of seconds, got {value}")
    return Settings(
        host=args.host, port=args.port, triton_url=args.triton_url, triton_grpc_port=args.triton_grpc_port,
        triton_resolve_interval_s=args.triton_resolve_interval, triton_check_interval_s=args.triton_check_interval,
        triton_http_port=args.triton_http_port, triton_metrics_port=args.triton_metrics_port,
        model_repository=args.model_repository, model_config_name=args.model_config_name,
        tritonserver=args.tritonserver,
        default_policy=args.default_policy,
        api_keys=read_api_keys(args.api_keys, args.api_key_file), max_frame_bytes=args.max_frame_bytes,
        max_connections=args.max_connections, max_live_sessions=args.max_live_sessions,
        idle_timeout_s=args.idle_timeout,
        triton_timeout_s=args.triton_timeout, log_level=args.log_level, drain_timeout_s=args.drain_timeout,
        triton_restart_delay_s=args.triton_restart_delay, triton_restart_max_delay_s=args.triton_restart_max_delay,
        triton_shared_memory=SHARED_MEMORY_SWITCH[args.triton_shared_memory],
        gr00t_port=args.gr00t_port, gr00t_policy=args.gr00t_policy, gr00t_allow_kill=args.gr00t_allow_kill,
        gr00t_modality_form=args.gr00t_modality_form, lerobot_port=args.lerobot_port, lerobot_host=args.lerobot_host,
        lerobot_allow=tuple(item.strip() for item in (args.lerobot_allow or "").split(",") if item.strip()),
    )


def _check_gr00t(settings: Settings) -> None:
    """What would keep the GR00T endpoint from starting, said before anything starts."""
    if settings.gr00t_port is None:
        return
    try:
        import zmq  # noqa: F401
    except ImportError:
        raise CliError("--gr00t-port needs pyzmq: pip install 'openpi-triton[gr00t]'") from None
    probe_host = "127.0.0.1" if ":" in settings.host else settings.host  # port_is_free probes IPv4
    if settings.gr00t_port == settings.port or not port_is_free(settings.gr00t_port, probe_host):
        raise CliError(f"--gr00t-port {settings.gr00t_port} is already in use on {settings.host}; choose another port")


def _check_lerobot(settings: Settings) -> None:
    """What would keep the LeRobot endpoint from starting, said before anything starts."""
    if settings.lerobot_port is None:
        return
    from openpi_triton.front.lerobot.access import AccessError, is_loopback_host, parse_networks

    try:
        networks = parse_networks(settings.lerobot_allow)
    except AccessError as error:
        raise CliError(f"--lerobot-allow: {error}") from None
    if not is_loopback_host(settings.lerobot_host) and not networks:
        raise CliError(f"--lerobot-host {settings.lerobot_host} would let any host that reaches the port run LeRobot "
                       "clients' requests (they send no credentials): give --lerobot-allow CIDR,... or tunnel to "
                       "loopback (README: LeRobot robots)")
    probe_host = "127.0.0.1" if ":" in settings.lerobot_host else settings.lerobot_host
    if settings.lerobot_port in (settings.port, settings.gr00t_port) or not port_is_free(settings.lerobot_port,
                                                                                         probe_host):
        raise CliError(f"--lerobot-port {settings.lerobot_port} is already in use on {settings.lerobot_host}")


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
        if settings.gr00t_port is not None:
            token = ", api_token='<key>'" if settings.auth_enabled else ""
            print(f"GR00T clients: tcp://{host}:{settings.gr00t_port}, policy {settings.gr00t_policy!r} "
                  f"(ModalityConfig for {settings.gr00t_modality_form.upper()} clients)\n"
                  f"  PolicyClient(host='{host}', port={settings.gr00t_port}{token})\n", flush=True)
        if settings.lerobot_port is not None:
            print(f"LeRobot robots: --server_address={settings.lerobot_host}:{settings.lerobot_port} "
                  "(--pretrained_name_or_path: a served policy's name)\n", flush=True)
    return announce


def _serve(args: argparse.Namespace) -> None:
    from openpi_triton.front.app import create_app, serve
    from openpi_triton.front.logs import configure_logging
    from openpi_triton.triton.embedded import EmbeddedTriton, EmbeddedTritonError
    from openpi_triton.triton.health import Health
    from openpi_triton.triton.supervisor import TritonSupervisor

    settings = settings_from_args(args)
    _check_gr00t(settings)
    _check_lerobot(settings)
    configure_logging(settings.log_level)
    if args.lerobot_policy and settings.triton_url is not None:
        raise CliError("--lerobot-policy runs in the embedded tritonserver; for --triton-url write the repository "
                       "with `openpi-triton lerobot-repository --output DIR ...` and give it to your Triton")
    lerobot_repository = write_lerobot_repository(args)  # checks the checkpoints before anything starts
    supervisor, health = None, Health()
    try:
        settings, repositories = _repositories(settings, lerobot_repository, args)
    except CliError:
        remove_repository(lerobot_repository)
        raise
    if settings.triton_url is None:
        triton = EmbeddedTriton(
            repositories, http_port=settings.triton_http_port,
            grpc_port=settings.triton_grpc_port, metrics_port=settings.triton_metrics_port,
            model_config_name=settings.model_config_name, tritonserver=settings.tritonserver,
        )
        health = Health(heals=True)
        supervisor = TritonSupervisor(triton, health, settings.triton_restart_delay_s,
                                      settings.triton_restart_max_delay_s)
        print(f"starting tritonserver (configuration {settings.model_config_name!r}) on gRPC port "
              f"{settings.triton_grpc_port} ...", flush=True)
        try:
            supervisor.start()
        except EmbeddedTritonError as error:  # a taken port, a missing binary: the message says what to do
            remove_repository(lerobot_repository)
            raise CliError(str(error)) from None
        settings = replace(settings, triton_url=triton.grpc_url,
                           triton_shared_memory=settings.shares_memory(embedded=True))
    try:
        serve(create_app(settings, on_ready=_announce(settings), health=health), settings)
    finally:
        if supervisor is not None:
            print("stopping tritonserver ...", flush=True)
            supervisor.stop()
            print("tritonserver stopped", flush=True)
        remove_repository(lerobot_repository)


def _repositories(settings: Settings, lerobot_repository: Path | None,
                  args: argparse.Namespace) -> tuple[Settings, list[Path]]:
    """The repositories the embedded tritonserver serves: the main one (unless only LeRobot checkpoints are
    served and its reference policy was never exported) and the generated LeRobot one."""
    from openpi_triton.triton.repository import config_names, core_needs_onnx

    if settings.triton_url is not None:
        return settings, []
    repository = settings.model_repository
    onnx_missing = (core_needs_onnx(repository, settings.model_config_name)
                    and not core_onnx_path(repository).exists())
    if lerobot_repository is not None and onnx_missing:
        print(f"{core_onnx_path(repository)} is missing: serving the LeRobot policies only", flush=True)
        if settings.default_policy == Settings().default_policy:
            settings = Settings(**{**vars(settings), "default_policy": args.lerobot_policy[0].partition("=")[0]})
        return settings, [lerobot_repository]
    if onnx_missing:
        raise CliError(f"{core_onnx_path(repository)} is missing: run `openpi-triton export` (or `make serve`) first")
    variants = config_names(repository)
    if settings.model_config_name not in variants:  # else tritonserver would load every config.pbtxt
        raise CliError(f"--model-config-name {settings.model_config_name}: no model in {repository} has "
                       f"configs/{settings.model_config_name}.pbtxt (there: {', '.join(variants) or 'none'})")
    return settings, [repository, *([lerobot_repository] if lerobot_repository is not None else [])]
