"""`make bench-triton`: NVIDIA's perf_analyzer on a policy ensemble over gRPC, fed real observations.

Observations of a format are mapped to the ensemble's inputs exactly as the front maps them, written
as perf_analyzer `--input-data` JSON, and perf_analyzer sweeps the concurrency range, reporting
p99 latency. Without --triton-url an embedded tritonserver (CPU configuration) is started.

perf_analyzer comes from the tritonclient[all] wheel; it needs Debian's libb64-0d (`make system-deps`
installs it) and libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel, which this module puts on
LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.arguments import add_flags
from benchmarks.observations import ensemble_inputs, policy_from_triton, unbatched
from openpi_triton.example_observations import make_observations
from openpi_triton.triton.policy import Policy

# Distinct observations in the input data; perf_analyzer cycles through them.
SAMPLES = 4


def _content(value: np.ndarray) -> dict[str, Any]:
    flat = value.reshape(-1)
    if value.dtype == object:  # BYTES: perf_analyzer takes them as strings
        content: list[Any] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    else:
        content = flat.tolist()
    return {"content": content, "shape": list(value.shape)}


def input_data(policy: Policy, observations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one entry per observation, shapes without the batch axis."""
    entries = []
    for index, observation in enumerate(observations):
        tensors = unbatched(policy, ensemble_inputs(policy, observation, seed=index))
        entries.append({name: _content(value) for name, value in tensors.items()})
    return {"data": entries}


def perf_analyzer_binary() -> Path:
    candidate = Path(sys.executable).parent / "perf_analyzer"
    found = candidate if candidate.is_file() else shutil.which("perf_analyzer")
    if not found:
        raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[all]==2.51.0'")
    return Path(found)


def perf_analyzer_env() -> dict[str, str]:
    """The environment with the CUDA runtime wheel's lib/ on LD_LIBRARY_PATH (perf_analyzer links
    libcudart.so.12 even when it never touches a GPU)."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        libs = [str(Path(path) / "lib") for path in nvidia.cuda_runtime.__path__]
    except ImportError:
        libs = []
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, env.get("LD_LIBRARY_PATH", "")]))
    return env


@dataclass(frozen=True)
class Sweep:
    """What perf_analyzer measures. Stability: p99 of consecutive windows within `stability_pct`; on a
    shared 2-core CPU the default 10% is rarely reached, hence a looser default."""

    concurrency: str = "1:16:5"
    measurement_ms: int = 5000
    stability_pct: float = 25.0
    max_trials: int = 6


def perf_analyzer_command(triton_url: str, policy: str, data_file: Path, csv_file: Path, sweep: Sweep,
                          extra: Sequence[str] = ()) -> list[str]:
    return [
        str(perf_analyzer_binary()), "-m", policy, "-i", "grpc", "-u", triton_url,
        "--input-data", str(data_file), f"--concurrency-range={sweep.concurrency}", "--percentile=99",
        f"--measurement-interval={sweep.measurement_ms}", f"--stability-percentage={sweep.stability_pct:g}",
        f"--max-trials={sweep.max_trials}", "-f", str(csv_file), *extra,
    ]


def read_results(csv_file: Path) -> list[dict[str, float]]:
    """perf_analyzer's CSV -> rows of concurrency, throughput and latency percentiles in ms."""
    rows = []
    with csv_file.open() as handle:
        for row in csv.DictReader(handle):
            rows.append({
                "concurrency": int(row["Concurrency"]),
                "throughput": float(row["Inferences/Second"]),
                **{f"p{p}_ms": int(row[f"p{p} latency"]) / 1000 for p in (50, 90, 95, 99)},
            })
    return sorted(rows, key=lambda r: r["concurrency"])


def format_results(rows: Sequence[dict[str, float]]) -> str:
    """Throughput and client-side latency. (The CSV's server columns cover the ensemble's own queue
    only, not its models'; perf_analyzer's printed per-model statistics have those.)"""
    lines = ["concurrency  infer/s   p50 ms   p90 ms   p99 ms"]
    lines += [f"{r['concurrency']:11d}  {r['throughput']:7.1f}  {r['p50_ms']:7.1f}  {r['p90_ms']:7.1f}  "
              f"{r['p99_ms']:7.1f}" for r in rows]
    return "\n".join(lines)


def run(triton_url: str | None, model_repository: Path, format_name: str, policy_name: str, sweep: Sweep,
        output: Path, extra: Sequence[str] = ()) -> list[dict[str, float]]:
    """Start Triton if needed, write the input data, run perf_analyzer; returns its rows."""
    output.mkdir(parents=True, exist_ok=True)
    data_file, csv_file = output / "input_data.json", output / "results.csv"
    with servers.triton(triton_url, model_repository) as (url, _):
        policy = policy_from_triton(url, policy_name)
        data_file.write_text(json.dumps(input_data(policy, make_observations(format_name, SAMPLES))))
        command = perf_analyzer_command(url, policy_name, data_file, csv_file, sweep, extra)
        print(" ".join(command), file=sys.stderr, flush=True)
        completed = subprocess.run(command, env=perf_analyzer_env(), check=False)
    if completed.returncode != 0:
        hint = " (is libb64-0d installed? `make system-deps`)" if completed.returncode == 127 else ""
        raise RuntimeError(f"perf_analyzer failed with exit status {completed.returncode}{hint}")
    rows = read_results(csv_file)
    (output / "summary.json").write_text(json.dumps({"policy": policy_name, "format": format_name, "rows": rows},
                                                    indent=1))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Arguments after -- go to perf_analyzer unchanged.")
    add_flags(parser, "triton-url", "model-repository", "format", "policy")
    parser.add_argument("--concurrency-range", default=Sweep.concurrency, help="start:end:step [default: %(default)s]")
    parser.add_argument("--measurement-interval", type=int, default=Sweep.measurement_ms,
                        help="ms per measurement window [default: %(default)s]")
    parser.add_argument("--stability-percentage", type=float, default=Sweep.stability_pct,
                        help="allowed p99 spread between windows [default: %(default)s]")
    parser.add_argument("--max-trials", type=int, default=Sweep.max_trials, help="[default: %(default)s]")
    add_flags(parser, "output", output=Path("bench-results/perf_analyzer"))
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        sweep = Sweep(args.concurrency_range, args.measurement_interval, args.stability_percentage, args.max_trials)
        rows = run(args.triton_url, args.model_repository, args.format, args.policy or args.format, sweep,
                   args.output, extra)
    except (RuntimeError, FileNotFoundError) as error:
        print(f"bench-triton: {error}", file=sys.stderr)
        sys.exit(1)
    print(format_results(rows))
    print(f"wrote {args.output}/results.csv, summary.json, input_data.json")


if __name__ == "__main__":
    main()
