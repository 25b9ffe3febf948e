"""What can run here of the GPU benchmark (`make gpu-bench`) and its kit (`make gpu-kit`), without a GPU:
the whole run rehearsed on the CPU in seconds, its targets' arithmetic, the kit's contents (tritonserver,
every library it links, the packages the run imports) and its install on a host without pip or network.
Building the real archive downloads and compresses ~100 MB, so it is `make gpu-kit`'s, not the tests'."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks import gpu_kit
from benchmarks.gpu_fleet import GpuFleetConfig
from benchmarks.gpu_fleet import run as run_gpu_fleet
from benchmarks.gpu_report import gpu_targets
from openpi_triton.example_observations import FORMATS
from openpi_triton.triton.embedded import EmbeddedTriton, find_triton

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_the_gpu_run_rehearsed_on_the_cpu(torch_triton: EmbeddedTriton, tmp_path: Path):
    config = GpuFleetConfig(model_repository=torch_triton.model_repositories[0], device="cpu", output=tmp_path,
                            progress=False).smoke()
    report = run_gpu_fleet(config, triton=(torch_triton.grpc_url, torch_triton.pid))

    assert report["core_parity"]["ok"] and set(report["core_parity"]["batches"]) == {1, 3}
    assert report["triton_parity"]["ok"] and set(report["triton_parity"]["formats"]) == set(FORMATS)
    assert "float32" in report["core_parity"]["core"] and report["graph_replay_ms"] is None  # no CUDA here
    results = json.loads((tmp_path / "results.json").read_text())
    for row in ("triton", "front", "reference"):
        points = results["rows"][row]["points"]
        assert [p["robots"] for p in points] == [1]
        assert all(p["requests"] > 0 and p["errors"] == 0 for p in points), row
    assert results["rows"]["front"]["points"][0]["triton"]["policy_core"]["requests"] > 0
    assert set(results["core_capacity"]["batches"]) == {"1", "2"}
    assert {"direct", "front", "reference", "core"} <= set(results["paired_one_robot"]["paths"])
    assert "1_robot" in report["targets"]
    summary = (tmp_path / "gpu.md").read_text()
    assert "Where each millisecond goes" in summary and "| openpi-triton front | 1 |" in summary
    for name in ("gpu.json", "table.md", "latency_cdf.png", "scaling.png"):
        assert (tmp_path / name).stat().st_size > 0


def _point(robots: int, throughput: float, p99: float) -> dict:
    return {"robots": robots, "throughput": throughput, "latency_ms": {"p99": p99}}


def test_gpu_targets_read_ratios_capacity_and_one_robot():
    results = {
        "rows": {"front": {"points": [_point(16, 5000, 4.0), _point(64, 7000, 9.0)]},
                 "reference": {"points": [_point(16, 900, 18.0), _point(64, 800, 80.0)]}},
        "core_capacity": {"batches": {"64": {"run_ms": 6.4}}},  # 10000 answers/s at batch 64
        "paired_one_robot": {"pairs": 3, "paths": {"front": {"times_ms": [3.0, 3.2, 3.1], "ms": {"p50": 3.1}},
                                                   "core": {"times_ms": [2.0, 1.9, 2.0], "ms": {"p50": 2.0}}}},
    }
    targets = gpu_targets(results)
    assert targets["16_robots"]["met"] and targets["16_robots"]["throughput_ratio"] == pytest.approx(5000 / 900)
    # 64 robots: 8.75x the reference (< 10x) but 70% of the batch-64 capacity: missed on the ratio.
    assert targets["64_robots"]["capacity_fraction"] == pytest.approx(0.7) and not targets["64_robots"]["met"]
    assert targets["1_robot"]["front_minus_core_ms"] == pytest.approx(1.1) and targets["1_robot"]["met"]
    results["rows"]["front"]["points"][0]["latency_ms"]["p99"] = 20.0  # above the reference's p99
    assert not gpu_targets(results)["16_robots"]["met"]


def test_the_kit_carries_tritonserver_and_every_library_it_links():
    files = gpu_kit.tritonserver_files(find_triton().root)
    names = set(files)
    assert {"tritonserver/bin/tritonserver", "tritonserver/backends/python/libtriton_python.so",
            "tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"} <= names
    libraries = [Path(name).name for name in names if name.startswith("tritonserver/lib/")]
    assert any(lib.startswith("libtritonserver") for lib in libraries)
    assert any(lib.startswith("libcudart") for lib in libraries)  # the CUDA 12 runtime Triton 2.51 links
    assert not [lib for lib in libraries if lib.startswith("libpython")]
    assert gpu_kit.unresolved_libraries(files) == {}
    assert "libtritonserver-717102f0.so" in gpu_kit.needed_libraries(files["tritonserver/bin/tritonserver"])


# Imported somewhere in the packages, but not on the GPU run: the CPU config's ONNX Runtime, the export
# (torch.onnx), an optional tokenizer, the wheel the kit's tritonserver replaces, Triton's own stub module,
# ZeroMQ (GR00T clients, `serve --gr00t-port` only).
NOT_ON_THE_GPU_RUN = {"onnxruntime", "onnx", "onnxscript", "sentencepiece", "nvidia-pytriton",
                      "triton_python_backend_utils", "pyzmq"}
GPU_RUN_BENCHMARKS = ("gpu_fleet", "gpu_report", "side_by_side", "servers", "channels", "reference_server",
                      "observations", "report", "triton_stats", "front_overhead", "overhead_servers",
                      "core_capacity", "cpu")


def _imported_top_level(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_the_kit_carries_what_the_gpu_run_imports():
    carried = set(gpu_kit.carried_packages())
    assert not carried & {gpu_kit._canonical(name) for name in gpu_kit.HOST_PACKAGES}
    paths = [*ROOT.glob("openpi_triton/**/*.py"), *ROOT.glob("openpi_policy/*.py"),
             *(ROOT / "benchmarks" / f"{name}.py" for name in GPU_RUN_BENCHMARKS)]
    ours = {"openpi_triton", "openpi_policy", "benchmarks"}
    distributions = metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level(paths) - ours - set(sys.stdlib_module_names)):
        names = {gpu_kit._canonical(d) for d in distributions.get(module, [module])}
        if not names & (carried | {gpu_kit._canonical(n) for n in (*gpu_kit.HOST_PACKAGES, *NOT_ON_THE_GPU_RUN)}):
            missing[module] = sorted(names)
    assert not missing, f"imported on the GPU run but neither in the kit nor on the host: {missing}"


def _fake_kit(tmp_path: Path, python: str) -> Path:
    """A kit archive with the real layout and a one-module site-packages."""
    tree = tmp_path / "tree"
    (tree / "site-packages" / "kitprobe").mkdir(parents=True)
    (tree / "site-packages" / "kitprobe" / "__init__.py").write_text("VALUE = 'from the kit'\n")
    (tree / "tritonserver" / "bin").mkdir(parents=True)
    (tree / "tritonserver" / "bin" / "tritonserver").write_text("")
    (tree / "kit.json").write_text(json.dumps({"python": python}))
    archive = tmp_path / "gpu-kit.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, str(path.relative_to(tree)), recursive=False)
    return archive


def test_install_makes_an_environment_that_sees_the_kit_and_the_checkout(tmp_path: Path):
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    archive, host = _fake_kit(tmp_path, running), tmp_path / "host"
    python = gpu_kit.install(archive, host)
    probe = subprocess.run([str(python), "-c", "import kitprobe, openpi_policy.spec as s; "
                            "print(kitprobe.VALUE, s.ACTION_DIM)"], capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["from", "the", "kit", "32"]
    stamp = (host / "installed.json").stat().st_mtime_ns
    assert gpu_kit.install(archive, host) == python and (host / "installed.json").stat().st_mtime_ns == stamp

    with pytest.raises(SystemExit, match=r"the kit is for Python 3\.99"):
        gpu_kit.install(_fake_kit(tmp_path / "other", "3.99"), tmp_path / "host2")
    with pytest.raises(SystemExit, match="make gpu-kit"):
        gpu_kit.install(tmp_path / "absent.tar.xz", host)
