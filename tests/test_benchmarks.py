"""The benchmarks run end to end in smoke mode: every row produces numbers and nothing errors.

No timing assertions: this machine is shared, and the numbers belong in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.front_overhead import measure_layers
from benchmarks.mixed_fleet import run as run_mixed_fleet
from benchmarks.mixed_fleet import shared_a_batch
from benchmarks.mixed_fleet import table as mixed_table
from benchmarks.perf_triton import Sweep, input_data
from benchmarks.perf_triton import run as run_perf_analyzer
from benchmarks.python_steps import measure as measure_python_steps
from benchmarks.replicas import run as run_replicas
from benchmarks.side_by_side import ROWS, SideBySideConfig, run
from openpi_triton.cli import bench as bench_command
from openpi_triton.example_observations import make_observations
from openpi_triton.triton.repository import policy_from_repository

from .conftest import MODEL_REPOSITORY


@pytest.mark.integration
def test_python_steps_compares_the_shipped_ensemble_with_a_slicing_step(model_onnx):
    result = measure_python_steps(MODEL_REPOSITORY, "aloha", "aloha", calls=2, warmup=1)
    assert result["one_python_step_p50_ms"] > 0 and result["two_python_steps_p50_ms"] > 0
    assert result["extra_step_triton_ms_per_request"] > 0  # the slicing step ran, and Triton timed it


@pytest.mark.integration
def test_side_by_side_smoke_produces_every_row(triton, tmp_path: Path):
    config = SideBySideConfig(model_repository=MODEL_REPOSITORY, triton_url=triton.grpc_url, output=tmp_path,
                              progress=False).smoke()
    rows = run(config)

    assert list(rows) == list(ROWS)
    for row, points in rows.items():
        assert [p.robots for p in points] == list(config.robots), row
        for point in points:
            assert point.errors == 0, (row, point.robots, point.error_messages)
            assert point.requests > 0 and point.throughput > 0, (row, point.robots)
            assert point.latency_ms["p50"] > 0 and point.latency_ms["max"] >= point.latency_ms["p99"]
    assert rows["front"][0].triton["policy_core"]["requests"] > 0  # Triton statistics were collected
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["rows"]) == set(ROWS) and "front_added_p50_ms" in results["targets"]
    paths = results["paired_one_robot"]["paths"]
    assert set(paths) == {"direct", "front", "reference", "core"}  # an external Triton: no shared memory
    assert all(path["ms"]["p50"] > 0 for path in paths.values())
    assert {"one_robot_vs_core", "one_robot_vs_reference"} <= set(results["targets"])
    for name in ("table.md", "latency_cdf.png", "scaling.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.integration
def test_replicas_benchmark_compares_one_and_two_replicas(triton, second_triton, tmp_path: Path):
    results = run_replicas(MODEL_REPOSITORY, "libero", "libero", (2,), duration_s=1.0, warmup_s=0.3, ort_threads=0,
                           output=tmp_path, progress=False, triton_urls=[triton.grpc_url, second_triton.grpc_url])
    rows = results["rows"]
    assert set(rows) == {"1 replica", "2 replicas"}
    for row in rows.values():
        [point] = row["points"]
        assert point["errors"] == 0 and point["requests"] > 0, point["error_messages"]
    [split] = rows["2 replicas"]["details"]
    assert len(split["replica_share"]) == 2 and all(share > 0 for share in split["replica_share"].values())
    assert "calls per replica" in (tmp_path / "table.md").read_text()


@pytest.mark.integration
def test_bench_command_drives_a_fleet_against_the_front(front, tmp_path: Path):
    parser = argparse.ArgumentParser()
    bench_command.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--url", f"{front}/v1/realtime/robot/openpi/libero", "--robots", "1,2",
                              "--rate", "50", "--duration", "1", "--warmup", "0.2", "--output", str(tmp_path)])
    args.run(args)

    results = json.loads((tmp_path / "results.json").read_text())
    assert [p["robots"] for p in results["points"]] == [1, 2]
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in results["points"])
    assert (tmp_path / "scaling.png").exists() and (tmp_path / "latency_cdf.png").exists()


@pytest.mark.integration
def test_perf_analyzer_sweeps_the_ensemble(triton, tmp_path: Path):
    # `make test` installs libb64-0d, which the wheel's perf_analyzer links; stability is loosened
    # only so that a short smoke sweep settles on a busy 2-core machine.
    sweep = Sweep(concurrency="1:2:1", measurement_ms=1000, stability_pct=100, max_trials=10)
    rows = run_perf_analyzer(triton.grpc_url, MODEL_REPOSITORY, "libero", "libero", sweep, tmp_path)

    assert [row["concurrency"] for row in rows] == [1, 2]
    assert all(row["throughput"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0 for row in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == rows


def test_perf_analyzer_input_data_has_every_ensemble_input():
    policy = policy_from_repository(MODEL_REPOSITORY, "libero")
    data = input_data(policy, make_observations("libero", 2))["data"]

    assert len(data) == 2
    entry = data[0]
    assert set(entry) == {"image", "wrist_image", "state", "prompt", "seed"}
    assert entry["image"]["shape"] == [224, 224, 3] and len(entry["image"]["content"]) == 224 * 224 * 3
    assert entry["state"]["shape"] == [8] and all(isinstance(v, float) for v in entry["state"]["content"])
    assert entry["prompt"] == {"content": ["put the black bowl on the plate"], "shape": [1]}


def test_front_overhead_layers_are_measured():
    layers = measure_layers(MODEL_REPOSITORY, "libero", "libero", calls=10)

    assert set(layers) == {"tcp", "websocket", "front"}
    assert all(summary["p50"] > 0 for summary in layers.values())


def test_mixed_fleet_proves_shared_batches_only_from_counts_that_prove_it():
    # 97 GR00T requests cannot be a sum of even batch sizes: some batch held both protocols.
    assert shared_a_batch({2: 1, 16: 12}, gr00t_requests=97, total=194) is True
    assert shared_a_batch({16: 6}, gr00t_requests=48, total=96) is None        # three batches of each, maybe
    assert shared_a_batch({3: 1, 13: 1, 16: 5}, gr00t_requests=48, total=96) is None
    assert shared_a_batch({16: 2}, gr00t_requests=15, total=40) is None        # other traffic in the window


@pytest.mark.integration
def test_mixed_fleet_smoke_runs_both_protocols(triton, tmp_path: Path):
    args = argparse.Namespace(triton_url=triton.grpc_url, model_repository=MODEL_REPOSITORY, robots=(2,), rate=20.0,
                              replan_steps=5, duration=1.0, warmup=0.3, seed=0, output=tmp_path)
    results = run_mixed_fleet(args)
    (point,) = results["points"]
    assert [fleet["row"] for fleet in point["fleets"]] == ["gr00t", "openpi"]
    assert all(fleet["requests"] > 0 and fleet["errors"] == 0 for fleet in point["fleets"]), point["fleets"]
    assert point["triton"]["so100"]["requests"] > 0 and point["triton"]["libero"]["requests"] > 0
    assert "a batch held both protocols" in mixed_table(results)
