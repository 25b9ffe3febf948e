"""The tool commands: `export` the reference policy, `check` a model repository, run a demo robot (`client`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from openpi_triton.cli.lerobot import add_lerobot_flags, remove_repository, write_lerobot_repository
from openpi_triton.cli.options import CliError
from openpi_triton.config import (
    CPU_CONFIG_NAME,
    DEFAULT_MODEL_REPOSITORY,
    DEFAULT_POLICY,
    FRONT_PORT,
    REALTIME_CONTROL_HZ,
    core_onnx_path,
)
from openpi_triton.example_observations import FORMATS
from openpi_triton.loadgen.realtime import RTC_MODES


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the reference policy to ONNX (needs the 'export' extra: torch)",
                       description="Export the seeded reference policy to model.onnx.")
    p.add_argument("--output", type=Path, default=core_onnx_path(DEFAULT_MODEL_REPOSITORY))
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


def register_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a model repository before serving it",
                       description="Check that a model repository's policies are consistent: ensemble "
                                   "parameters, tensor names/dtypes/shapes, norm stats, model.onnx.")
    p.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    p.add_argument("--config-name", default=CPU_CONFIG_NAME,
                   help="config variant Triton will load (configs/<name>.pbtxt)")
    add_lerobot_flags(p)  # given: the LeRobot checkpoints are checked (as `serve` would), not the repository

    def run(args: argparse.Namespace) -> None:
        from openpi_triton.check import check_repository

        if args.lerobot_policy:
            generated = write_lerobot_repository(args)
            try:
                report = check_repository(generated, args.config_name)
            finally:
                remove_repository(generated)
            for problem in report.problems:
                print(f"error: {problem}")
            if not report.ok:
                sys.exit(1)
            print(f"OK: serves {len(report.policies)} LeRobot policies: {', '.join(report.policies)}")
            return
        report = check_repository(args.model_repository, args.config_name)
        for problem in report.problems:
            print(f"error: {problem}")
        if not report.ok:
            sys.exit(1)
        print(f"OK: {args.model_repository} serves {len(report.policies)} policies: {', '.join(report.policies)}")

    p.set_defaults(run=run)


def _progress(done: int, total: int, latency_ms: float) -> None:
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  latency {latency_ms:7.1f} ms")
    sys.stderr.flush()


def register_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="demo robot: N steps of synthetic observations with openpi_client",
                       description="Run a demo robot loop against a server with the stock openpi_client.")
    p.add_argument("--format", choices=sorted(FORMATS), default=DEFAULT_POLICY, help="observation format to send")
    p.add_argument("--policy", help="policy to ask (default: the one named like the format)")
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=FRONT_PORT)
    p.add_argument("--api-key", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic observations")
    p.add_argument("--realtime", action="store_true",
                   help="real-time mode: execute actions at --control-hz while the next chunk is computed, "
                        "measure the delay and use real-time chunking (--rtc); reports chunk-boundary jumps")
    p.add_argument("--control-hz", type=float, default=REALTIME_CONTROL_HZ, help="real-time mode: control rate")
    p.add_argument("--rtc", choices=RTC_MODES, default="remembered",
                   help="real-time mode: RTC keys to send (remembered: rtc/executed; explicit: rtc/leftover)")
    p.add_argument("--seconds", type=float, default=10.0, help="real-time mode: how long to run")
    p.add_argument("--replan-after", type=int, default=None,
                   help="real-time mode: actions of a chunk executed before the next is asked for (default: half)")

    def run(args: argparse.Namespace) -> None:
        try:
            from openpi_client.websocket_client_policy import WebsocketClientPolicy
        except ImportError:
            raise CliError("the demo client needs openpi-client: pip install 'openpi-triton[client]'") from None

        policy = WebsocketClientPolicy(host=f"ws://{args.host}:{args.port}/v1/realtime/robot/openpi/"
                                       f"{args.policy or args.format}", api_key=args.api_key)
        print(f"connected; server metadata: {policy.get_server_metadata()}", file=sys.stderr)
        if args.realtime:
            _run_realtime(policy, args)
            return
        make_observation = FORMATS[args.format]
        rng = np.random.default_rng(args.seed)
        latencies, shape = [], None
        for step in range(1, args.steps + 1):
            observation = make_observation(rng)
            started = time.perf_counter()
            result = policy.infer(observation)
            latencies.append((time.perf_counter() - started) * 1000)
            shapes = {key: value.shape for key, value in result.items() if isinstance(value, np.ndarray)}
            shape = shapes.get("actions", shapes)  # a GR00T-shaped policy answers several action keys
            _progress(step, args.steps, latencies[-1])
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        print(f"\n{args.steps} steps of {args.format}: actions {shape}; latency p50 {p50:.1f} ms, "
              f"p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms")

    p.set_defaults(run=run)


def _run_realtime(policy: object, args: argparse.Namespace) -> None:
    from openpi_triton.loadgen.realtime import RealtimeRobot, lerobot_observer

    metadata = policy.get_server_metadata()  # type: ignore[attr-defined]
    if args.rtc != "off" and not metadata.get("rtc", {}).get("supported"):
        raise CliError(f"policy {args.policy or args.format!r} does not support real-time chunking; use --rtc off")
    if "lerobot" in metadata:
        observe = lerobot_observer(metadata, args.seed)
    else:
        rng, make_observation = np.random.default_rng(args.seed), FORMATS[args.format]
        observe = lambda _last: make_observation(rng)  # noqa: E731
    robot = RealtimeRobot(policy, observe, args.control_hz, args.rtc, args.replan_after)
    summary = robot.run(args.seconds).summary()
    print(f"{summary['chunks']} chunks at {args.control_hz:g} Hz, RTC {args.rtc}: latency p50 "
          f"{summary['latency_ms_p50']:.1f} ms (delay {summary['delay_steps_mean']:.1f} steps); boundary jump mean "
          f"{_figure(summary['jump_mean'])} max {_figure(summary['jump_max'])} (steps inside a chunk: "
          f"{_figure(summary['inner_step_mean'])}); starved steps {summary['starved_steps']}")
    for error in summary["errors"]:
        print(f"refused: {error}", file=sys.stderr)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
