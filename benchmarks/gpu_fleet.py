"""`make gpu-bench`: the robot fleet on a GPU through Triton, side by side with OpenPI's reference server
running the same PyTorch policy core in-process on the same GPU.

On a host with a CUDA GPU and a Python with torch+CUDA (`benchmarks/gpu_kit.py` brings the rest), it
1. checks the PyTorch core on the GPU (float16, CUDA graphs) against the same network in float32 on the
   CPU, in-process and as Triton serves it, within `FP16_TOLERANCE`;
2. times the bare core in-process per batch size (1…64: the capacity, host copies included) and its CUDA
   graph replays alone;
3. runs the side-by-side sweep (`benchmarks.side_by_side`) in closed loop at 1, 4, 16 and 64 robots: Triton
   gRPC direct, the front, the reference server, with tritonserver on the GPU serving configs/gpu_torch.pbtxt,
   Triton's per-model statistics over each window, and one robot's paired calls on every path;
4. writes results.json, table.md and the plots (as `make bench` does) and gpu.json + gpu.md (the targets,
   where each millisecond goes) under docs/results/<GPU name>/.

    python -m benchmarks.gpu_fleet [--duration 15] [--robots 1,4,16,64] [--tritonserver DIR]

`--device cpu` rehearses all of it on a CPU (float32, no CUDA graphs), on a copy of the repository whose
policy core runs KIND_CPU; the tests run that with `--smoke`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.arguments import add_flags
from benchmarks.gpu_report import gpu_markdown, gpu_targets
from benchmarks.side_by_side import SideBySideConfig
from benchmarks.side_by_side import run as run_side_by_side
from openpi_triton.config import DEFAULT_MODEL_REPOSITORY, DEFAULT_POLICY, GPU_TORCH_CONFIG_NAME
from openpi_triton.loadgen.schedule import Schedule

ROWS = ("triton", "front", "reference")
CAPACITY_BATCHES = (1, 2, 4, 8, 16, 32, 64)
PARITY_BATCHES = (1, 3, 64)  # one robot, a batch padded into a larger graph, the largest batch


@dataclass(frozen=True)
class GpuFleetConfig:
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    format: str = DEFAULT_POLICY
    robots: tuple[int, ...] = (1, 4, 16, 64)
    # 12 points of 15 + 3 s, with the servers' starts and graph captures: ~6 min, within a 10-minute command.
    duration_s: float = 15.0
    warmup_s: float = 3.0
    device: str = "cuda"
    output: Path | None = None  # default: docs/results/<GPU name>
    tritonserver: Path | None = None
    capacity_batches: tuple[int, ...] = CAPACITY_BATCHES
    capacity_rounds: int = 5
    paired_calls: int = 300
    parity_batches: tuple[int, ...] = PARITY_BATCHES
    progress: bool = True

    def smoke(self) -> GpuFleetConfig:
        """Seconds, not minutes: one robot per row, two-second windows, tiny capacity, parity and paired
        runs (batching is what a GPU run measures; the tests check it through Triton on their own)."""
        return replace(self, robots=(1,), duration_s=2.0, warmup_s=1.0, capacity_batches=(1, 2),
                       capacity_rounds=1, paired_calls=10, parity_batches=(1, 3))


def gpu_config_on_cpu(directory: Path, model_repository: Path = DEFAULT_MODEL_REPOSITORY) -> Path:
    """A copy of the repository (without model.onnx, which the PyTorch core does not read) whose gpu_torch
    policy core runs KIND_CPU instances: the GPU configuration on a machine without a GPU."""
    repo = Path(directory) / "model_repository"
    shutil.copytree(model_repository, repo, ignore=shutil.ignore_patterns("__pycache__", "model.onnx", "model.plan"))
    config = repo / "policy_core" / "configs" / f"{GPU_TORCH_CONFIG_NAME}.pbtxt"
    text = config.read_text()
    if "KIND_GPU" not in text:
        raise ValueError(f"{config}: no KIND_GPU instance group to move to the CPU")
    config.write_text(text.replace("KIND_GPU", "KIND_CPU"))
    return repo


def device_info(device: str) -> dict[str, Any]:
    """What the numbers depend on: the GPU, its driver, PyTorch and CUDA."""
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
    else:
        info["gpu"] = None
    return info


def default_output(info: dict[str, Any]) -> Path:
    name = info["gpu"] or "cpu-rehearsal"
    return Path("docs/results") / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _core_config(config: GpuFleetConfig) -> dict[str, Any]:
    from openpi_triton.triton.repository import config_path, read_model_config

    return read_model_config(config_path(config.model_repository / "policy_core", GPU_TORCH_CONFIG_NAME))


def _parity_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    """Example core inputs with norm tables that are not the identity, as a robot format's are."""
    from openpi_policy.export import example_inputs

    inputs = example_inputs(batch, seed)
    inputs["state_norm"][:, 1] = 1.5
    inputs["action_norm"][:, 0] = 0.25
    inputs["action_norm"][:, 1] = 2.0
    return inputs


def served_core(config: GpuFleetConfig) -> tuple[Any, float]:
    """The PyTorch core as the Triton instance builds it (configs/gpu_torch.pbtxt on `device`), and the
    seconds its build took (CUDA graph captures included)."""
    from openpi_policy.core_config import core_settings
    from openpi_policy.torch_core import build_torch_core

    core_config = _core_config(config)
    started = time.perf_counter()
    core = build_torch_core(core_settings(core_config), config.device, int(core_config["max_batch_size"]))
    return core, time.perf_counter() - started


def core_parity(config: GpuFleetConfig, core: Any) -> dict[str, Any]:
    """`core` against a fresh build of its network (the factory's own float32 weights) on the CPU, per
    batch size: the largest difference, and whether every action is within FP16_TOLERANCE."""
    import torch

    from openpi_policy.core_config import core_settings
    from openpi_policy.torch_core import FP16_TOLERANCE, TorchCore, build_network

    network = build_network(core_settings(_core_config(config)))
    reference = TorchCore(network, torch.device("cpu"), torch.float32, core.max_batch)
    batches = config.parity_batches
    compared = {}
    for batch in (b for b in batches if b <= core.max_batch):
        inputs = _parity_inputs(batch, seed=batch)
        got, expected = core(inputs), reference(inputs)
        compared[batch] = {"max_abs_diff": float(np.abs(got - expected).max()),
                           "within_tolerance": bool(np.allclose(got, expected, **FP16_TOLERANCE))}
    return {"tolerance": FP16_TOLERANCE, "batches": compared,
            "ok": bool(compared) and all(b["within_tolerance"] for b in compared.values())}


def graph_replay_ms(core: Any, batches: tuple[int, ...], runs: int = 50) -> dict[int, float] | None:
    """Each CUDA graph's replay alone (no host copies), timed with CUDA events: the GPU's share of a batch."""
    import torch

    if not core.graphs:
        return None
    replay = {}
    for batch in (b for b in batches if b in core.graphs):
        graph, _ = core.graphs[batch]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(runs):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        replay[batch] = start.elapsed_time(end) / runs
    return replay


def triton_parity(config: GpuFleetConfig, triton_url: str) -> dict[str, Any]:
    """The ensemble's actions from Triton against the in-process pipeline with the float32 core on the CPU,
    per format, for the same observation and seed."""
    import tritonclient.grpc as grpcclient

    from openpi_policy.torch_core import FP16_TOLERANCE
    from openpi_triton.example_observations import FORMATS, make_observations
    from openpi_triton.front.codec import flatten
    from openpi_triton.front.observations import observation_to_tensors
    from openpi_triton.triton.grpc_tensors import infer_inputs
    from openpi_triton.triton.reference import load_reference_pipeline
    from openpi_triton.triton.repository import policy_from_repository

    formats = {}
    with grpcclient.InferenceServerClient(triton_url) as client:
        for name in sorted(FORMATS):
            policy = policy_from_repository(config.model_repository, name)
            inputs = observation_to_tensors(policy, flatten(make_observations(name, 1, 7)[0]), 7)
            served = client.infer(name, infer_inputs(inputs)).as_numpy("actions")
            expected = load_reference_pipeline(config.model_repository, name, config_name=GPU_TORCH_CONFIG_NAME,
                                               device="cpu")(inputs)
            formats[name] = {"max_abs_diff": float(np.abs(served - expected).max()),
                             "within_tolerance": bool(np.allclose(served, expected, **FP16_TOLERANCE))}
    return {"formats": formats, "ok": all(f["within_tolerance"] for f in formats.values())}


@contextlib.contextmanager
def _repository(config: GpuFleetConfig) -> Iterator[GpuFleetConfig]:
    """The repository as is on a GPU; a KIND_CPU copy for a CPU rehearsal."""
    if config.device.startswith("cuda"):
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="gpu-fleet-") as tmp:
        yield replace(config, model_repository=gpu_config_on_cpu(Path(tmp), config.model_repository))


def run(config: GpuFleetConfig, triton: tuple[str, int | None] | None = None) -> dict[str, Any]:
    """Everything above; returns gpu.json's content. `triton`: (URL, pid) of a tritonserver already serving
    `config.model_repository` with configs/gpu_torch.pbtxt (the tests'); default: one started here."""
    info = device_info(config.device)
    output = config.output or default_output(info)
    with contextlib.ExitStack() as stack:
        if triton is None:
            config = stack.enter_context(_repository(config))
        _say(config, f"building the PyTorch core on {config.device} and checking it against float32 on the CPU ...")
        core, build_s = served_core(config)
        parity = {"core": core.description, "build_and_capture_s": build_s,
                  **core_parity(config, core)}
        replay = graph_replay_ms(core, config.capacity_batches)
        if triton is None:
            _say(config, "starting tritonserver (configs/gpu_torch.pbtxt) ...")
            triton = stack.enter_context(servers.triton(None, config.model_repository, GPU_TORCH_CONFIG_NAME,
                                                        config.tritonserver))
        served = triton_parity(config, triton[0])
        side = SideBySideConfig(
            model_repository=config.model_repository, format=config.format, robots=config.robots, rows=ROWS,
            schedule=Schedule(rate_hz=0.0), duration_s=config.duration_s, warmup_s=config.warmup_s,
            output=output, progress=config.progress, capacity_batches=config.capacity_batches,
            capacity_rounds=config.capacity_rounds, paired_calls=config.paired_calls,
            model_config_name=GPU_TORCH_CONFIG_NAME, device=config.device, tritonserver=config.tritonserver)
        run_side_by_side(side, triton, core)
    results = json.loads((output / "results.json").read_text())
    settings = {**asdict(config), "model_repository": str(config.model_repository), "output": str(output),
                "tritonserver": None if config.tritonserver is None else str(config.tritonserver)}
    report = {"device": info, "config": settings,
              "core_parity": parity, "triton_parity": served, "graph_replay_ms": replay,
              "targets": gpu_targets(results)}
    (output / "gpu.json").write_text(json.dumps(report, indent=1))
    (output / "gpu.md").write_text(gpu_markdown(report, results))
    return report


def _say(config: GpuFleetConfig, text: str) -> None:
    if config.progress:
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "model-repository", "format", "robots", "duration", "warmup", "tritonserver",
              robots=(1, 4, 16, 64), duration=15.0)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a rehearsal")
    parser.add_argument("--output", type=Path, help="default: docs/results/<GPU name>")
    parser.add_argument("--paired-calls", type=int, default=300, help="rounds of one robot on every path")
    parser.add_argument("--smoke", action="store_true", help="seconds: one robot per row, two-second windows")
    args = parser.parse_args(argv)
    config = GpuFleetConfig(model_repository=args.model_repository, format=args.format, robots=args.robots,
                            duration_s=args.duration, warmup_s=args.warmup, device=args.device, output=args.output,
                            tritonserver=args.tritonserver, paired_calls=args.paired_calls)
    report = run(config.smoke() if args.smoke else config)
    output = Path(report["config"]["output"])
    print((output / "gpu.md").read_text())
    if not (report["core_parity"]["ok"] and report["triton_parity"]["ok"]):
        print("the GPU's actions are not within the float16 tolerance of float32: see gpu.json", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
