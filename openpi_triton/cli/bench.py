"""`openpi-triton bench`: a fleet of simulated robots against any OpenPI websocket server.

The work is in `openpi_triton.loadgen`; this module only declares the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openpi_triton.cli.options import CliError
from openpi_triton.config import DEFAULT_POLICY, FRONT_PORT, GR00T_GENERATIONS, GR00T_N16, GR00T_PORT
from openpi_triton.example_observations import FORMATS
from openpi_triton.loadgen.schedule import Schedule, parse_robot_counts


def _robot_counts(text: str) -> tuple[int, ...]:
    try:
        return parse_robot_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url
    if args.protocol == "gr00t":  # one policy per GR00T port: the server's --gr00t-policy
        return f"tcp://{args.host}:{args.port or GR00T_PORT}"
    policy = args.policy or args.format
    return f"ws://{args.host}:{args.port or FRONT_PORT}/v1/realtime/robot/openpi/{policy}"


def _run(args: argparse.Namespace) -> None:
    try:
        from openpi_triton.loadgen.sweep import LoadgenConfig, format_table, run_sweep, write_results
    except ImportError as error:
        raise CliError(f"the load generator needs the 'bench' extra: pip install 'openpi-triton[bench]' "
                       f"({error})") from None
    if args.rate < 0 or args.replan_steps < 1 or args.duration <= 0:
        raise CliError("--rate must be >= 0, --replan-steps >= 1 and --duration > 0")
    schedule = Schedule(args.rate, args.replan_steps,
                        None if args.deadline_ms is None else args.deadline_ms / 1000)
    config = LoadgenConfig(url=_url(args), format=args.format, robots=args.robots, schedule=schedule,
                           duration_s=args.duration, warmup_s=args.warmup, api_key=args.api_key,
                           label=args.label, seed=args.seed, protocol=args.protocol,
                           gr00t_generation=args.gr00t_generation)
    print(f"{config.url}: {', '.join(map(str, config.robots))} robots, {schedule.describe()}, "
          f"{config.duration_s:g} s each", file=sys.stderr)
    points = run_sweep(config)
    files = write_results(config, points, args.output)
    print(format_table(points))
    print("wrote " + ", ".join(str(path) for path in files.values()))
    if any(not point.ok for point in points):
        for point in points:
            for message in point.error_messages:
                print(f"  {point.robots} robots: {message}", file=sys.stderr)
        sys.exit(1)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="load-test a server with a fleet of simulated robots (OpenPI or GR00T wire format)",
        description="Simulated robots, each on its own websocket: every robot runs its controller at --rate Hz "
                    "and asks for a new action chunk every --replan-steps steps; the answer is due before "
                    "those steps run out (deadline = replan-steps / rate unless --deadline-ms). Reports "
                    "latency percentiles, throughput, deadline misses and errors per fleet size, and writes "
                    "results.json plus PNG plots.")
    p.add_argument("--url", help="websocket URL of the policy, or tcp://host:port of a GR00T endpoint (default: "
                   "built from --host/--port/--policy)")
    p.add_argument("--protocol", choices=("openpi", "gr00t"), default="openpi",
                   help="openpi: websocket robots (openpi_client's wire format); gr00t: Isaac GR00T clients over "
                        "ZeroMQ, against a server's --gr00t-port (use --format so100 for the shipped GR00T policy)")
    p.add_argument("--gr00t-generation", choices=GR00T_GENERATIONS, default=GR00T_N16,
                   help="with --protocol gr00t: the GR00T client generation whose requests are sent")
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=None,
                   help=f"[default: {FRONT_PORT}, or {GR00T_PORT} with --protocol gr00t]")
    p.add_argument("--policy", help="policy to ask (default: the one named like the format)")
    p.add_argument("--format", choices=sorted(FORMATS), default=DEFAULT_POLICY,
                   help="observation format to send")
    p.add_argument("--api-key", default=None, help="the robots' API key (GR00T clients send it as api_token)")
    p.add_argument("--robots", type=_robot_counts, default=(1, 4, 16),
                   help="fleet sizes to run one after another, comma-separated [default: 1,4,16]")
    p.add_argument("--rate", type=float, default=10.0, help="control rate in Hz; 0 = closed loop [default: 10]")
    p.add_argument("--replan-steps", type=int, default=5, help="control steps between requests [default: 5]")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="answer deadline [default: replan-steps / rate]")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per fleet size [default: 20]")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each window [default: 2]")
    p.add_argument("--label", default="server", help="name of this server in the results and plots")
    p.add_argument("--seed", type=int, default=0, help="seed of the observations and robot phases")
    p.add_argument("--output", type=Path, default=Path("bench-results/loadgen"), help="results directory")
    p.set_defaults(run=_run)
