"""The GPU-host deployment (docker-compose.yml and docker/), checked without Docker or a GPU.

The compose file is validated against the Compose Specification JSON schema that the
check-jsonschema package ships (nothing is downloaded at test time), then against what the
deployment relies on. docker/build_engine.sh runs for real, with a stand-in trtexec that records
its arguments.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from openpi_triton.triton.repository import read_model_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
BUILD_ENGINE = ROOT / "docker" / "build_engine.sh"
POLICY_CORE_CONFIG = ROOT / "model_repository" / "policy_core" / "config.pbtxt"
# Mounted paths that are outputs, absent from a fresh clone, and what writes them.
GENERATED = {"bench-results/perf_analyzer": "make bench-triton"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    # Picked by hand: releases before 2020-12 declare draft-07 by an https URL that jsonschema does
    # not recognise (it would warn and guess).
    draft_2020 = "2020-12" in schema.get("$schema", "")
    return (jsonschema.Draft202012Validator if draft_2020 else jsonschema.Draft7Validator)(schema)


def _schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(document))


def test_compose_file_follows_the_compose_specification(compose, validator):
    assert _schema_errors(validator, compose) == []


def test_the_schema_catches_mistakes(compose, validator):
    broken = json.loads(json.dumps(compose))
    broken["services"]["triton"]["healthchek"] = broken["services"]["triton"].pop("healthcheck")
    broken["services"]["frontend"]["depends_on"]["triton"]["condition"] = "service_ready"
    errors = _schema_errors(validator, broken)
    assert any("healthchek" in e for e in errors) and any("service_ready" in e for e in errors), errors


def test_services_and_profiles(compose):
    services = compose["services"]
    assert {"engine", "triton", "frontend", "bench"} <= set(services)
    # perf_analyzer only runs when asked for; everything else starts with a plain `docker compose up`.
    assert services["bench"].get("profiles") == ["bench"]
    assert [name for name, s in services.items() if name != "bench" and s.get("profiles")] == []


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):  # the short form waits for the start only
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def test_start_order(compose):
    services = compose["services"]
    assert _depends_on(services["triton"]).get("engine") == "service_completed_successfully"
    assert _depends_on(services["frontend"]).get("triton") == "service_healthy"
    assert _depends_on(services["bench"]).get("triton") == "service_healthy"


def _nvidia_gpus(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


@pytest.mark.parametrize("name", ["engine", "triton"])
def test_gpu_reservation(compose, name):
    assert _nvidia_gpus(compose["services"][name]), f"service {name} reserves no NVIDIA GPU"


@pytest.mark.parametrize(("name", "url"), [("triton", "localhost:8000/v2/health/ready"),
                                           ("frontend", "localhost:8000/readyz")])
def test_healthcheck(compose, name, url):
    check = compose["services"][name].get("healthcheck")
    assert check and not check.get("disable"), f"service {name} has no healthcheck"
    test = check["test"] if isinstance(check["test"], str) else " ".join(check["test"])
    assert url in test


def test_shared_memory_between_front_and_triton(compose):
    """The front writes camera frames into /dev/shm for Triton to read: both need the host's IPC."""
    services = compose["services"]
    assert "OPENPI_TRITON_TRITON_SHARED_MEMORY=on" in services["frontend"]["environment"]
    assert services["frontend"].get("ipc") == "host" and services["triton"].get("ipc") == "host"


def test_triton_serves_the_mounted_model_repository(compose):
    triton = compose["services"]["triton"]
    command = triton["command"] if isinstance(triton["command"], str) else " ".join(triton["command"])
    repository = re.search(r"--model-repository[= ](\S+)", command)
    assert repository, command
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in triton["volumes"]}
    assert Path(mounts[repository.group(1)]) == Path("model_repository")


def test_one_release_for_tensorrt_and_triton(compose):
    """A TensorRT plan only loads in the TensorRT version that built it: the engine image, Triton's
    base image and the perf_analyzer image must be one NGC release."""
    def release(image: str) -> str:
        return image.rsplit(":", 1)[1].split("-")[0]

    services = compose["services"]
    dockerfile = ROOT / services["triton"]["build"]["dockerfile"]
    base = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    assert base, f"{dockerfile} has no FROM"
    releases = {release(services["engine"]["image"]), release(base.group(1)), release(services["bench"]["image"])}
    assert len(releases) == 1, releases


def _host_paths(compose: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(what, path relative to the compose file) for every bind mount, build context and Dockerfile."""
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":")[0]
                if source.startswith((".", "/", "~")):  # otherwise a named volume
                    yield f"{name}: volume", source
            elif volume.get("type") == "bind":
                yield f"{name}: volume", volume["source"]
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            yield f"{name}: build context", context
            yield f"{name}: dockerfile", str(Path(context) / dockerfile)


def _gitignored(relative: str) -> bool:
    patterns = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    parts = Path(relative).parts
    return any("/".join(parts[: i + 1]) in patterns for i in range(len(parts)))


def test_every_host_path_is_in_the_repository(compose):
    paths = list(_host_paths(compose))
    assert paths
    for what, source in paths:
        path = (ROOT / source).resolve()
        assert path.is_relative_to(ROOT), f"{what}: {source} is outside the repository"
        relative = path.relative_to(ROOT).as_posix()
        if relative in GENERATED:
            assert _gitignored(relative), f"{what}: {source} is not gitignored, so not an output"
        else:
            assert path.exists(), f"{what}: {source} does not exist"


def test_dockerfiles_copy_what_exists(compose):
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    builds = [s["build"] for s in compose["services"].values() if isinstance(s.get("build"), dict)]
    assert builds
    for build in builds:
        context = ROOT / build.get("context", ".")
        for line in (context / build["dockerfile"]).read_text().splitlines():
            words = line.split()
            if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for source in words[1:-1]:
                assert (context / source).exists(), f"{build['dockerfile']}: COPY {source}: no such path"
                assert source not in ignored, f"{build['dockerfile']}: COPY {source} is in .dockerignore"


# --- docker/build_engine.sh, with a stand-in trtexec ----------------------------------------------

FAKE_TRTEXEC = """#!/usr/bin/env bash
# Stand-in for trtexec: records its arguments and writes an "engine" where --saveEngine says.
printf '%s\\n' "$@" > "$TRTEXEC_ARGS"
for arg in "$@"; do
  case $arg in --saveEngine=*) echo engine > "${arg#--saveEngine=}" ;; esac
done
exit "${TRTEXEC_EXIT:-0}"
"""

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


class EngineBuild:
    """A copy of policy_core (config.pbtxt, a placeholder model.onnx) and build_engine.sh runs on it."""

    def __init__(self, root: Path, max_batch_size: int | None = None) -> None:
        self.model_dir = root / "policy_core"
        (self.model_dir / "1").mkdir(parents=True)
        config = POLICY_CORE_CONFIG.read_text()
        if max_batch_size is not None:
            config = re.sub(r"max_batch_size:\s*\d+", f"max_batch_size: {max_batch_size}", config)
        (self.model_dir / "config.pbtxt").write_text(config)
        self.onnx = self.model_dir / "1" / "model.onnx"
        self.plan = self.model_dir / "1" / "model.plan"
        self.onnx.write_text("onnx")
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "trtexec").write_text(FAKE_TRTEXEC)
        (self.bin / "trtexec").chmod(0o755)
        self.args_file = root / "trtexec-args"

    def run(self, **env: str) -> subprocess.CompletedProcess[str]:
        self.args_file.unlink(missing_ok=True)
        environment = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                       "TRTEXEC_ARGS": str(self.args_file), **env}
        return subprocess.run(["bash", str(BUILD_ENGINE), str(self.model_dir)], env=environment,
                              capture_output=True, text=True, timeout=60, check=False)

    def trtexec_args(self) -> dict[str, str]:
        lines = self.args_file.read_text().splitlines()
        return {flag: value for flag, _, value in (line.partition("=") for line in lines)}


def _shapes(spec: str) -> dict[str, list[int]]:
    """trtexec's name:AxBxC,... -> {name: [A, B, C]}."""
    return {name: [int(d) for d in dims.split("x")] for name, _, dims in (s.partition(":") for s in spec.split(","))}


@needs_bash
@pytest.mark.parametrize("max_batch_size", [None, 4])
def test_engine_profile_covers_every_policy_core_input(tmp_path, max_batch_size):
    build = EngineBuild(tmp_path, max_batch_size)
    config = read_model_config(build.model_dir / "config.pbtxt")
    dims = {tensor["name"]: [int(d) for d in tensor["dims"]] for tensor in config["input"]}
    assert dims, "policy_core has no inputs"

    result = build.run()
    assert result.returncode == 0, result.stderr
    args = build.trtexec_args()
    assert args["--onnx"] == str(build.onnx)
    assert "--fp16" in args
    assert build.plan.read_text().strip() == "engine"

    assert _shapes(args["--minShapes"]) == {name: [1, *d] for name, d in dims.items()}
    assert _shapes(args["--maxShapes"]) == {name: [int(config["max_batch_size"]), *d] for name, d in dims.items()}
    opt = _shapes(args["--optShapes"])
    opt_batch = opt[next(iter(dims))][0]
    assert 1 <= opt_batch <= int(config["max_batch_size"])
    assert opt == {name: [opt_batch, *d] for name, d in dims.items()}


@needs_bash
def test_engine_profile_is_read_from_the_config(tmp_path):
    """No second list of shapes to keep in step: a changed config.pbtxt changes the profile."""
    build = EngineBuild(tmp_path)
    config = build.model_dir / "config.pbtxt"
    text = config.read_text()
    old = '{ name: "images" data_type: TYPE_UINT8 dims: [ 3, 224, 224, 3 ] }'
    assert old in text
    config.write_text(text.replace(old, '{ name: "images" data_type: TYPE_UINT8 dims: [ 2, 256, 256, 3 ] },\n'
                                        '  { name: "depth" data_type: TYPE_FP32 dims: [ 64 ] }'))
    result = build.run()
    assert result.returncode == 0, result.stderr
    shapes = _shapes(build.trtexec_args()["--maxShapes"])
    assert shapes["images"] == [16, 2, 256, 256, 3] and shapes["depth"] == [16, 64]
    assert shapes["state_norm"] == [16, 2, 32]  # the other inputs still there


@needs_bash
def test_fp32_layers_name_the_serving_steps_of_the_exported_graph(tmp_path, model_onnx):
    """The FP16 engine keeps the state and action normalisation in FP32 by ONNX node name (TensorRT names
    its layers after the ONNX nodes): each pattern must match nodes of the exported graph, and the
    arithmetic on the raw state and on the un-normalised actions must be among them."""
    import onnx

    from openpi_policy.serving import FP32_STEPS

    build = EngineBuild(tmp_path)
    assert build.run().returncode == 0
    args = build.trtexec_args()
    assert args["--precisionConstraints"] in ("prefer", "obey")
    patterns = [spec.rsplit(":", 1) for spec in args["--layerPrecisions"].split(",")]
    assert all(precision == "fp32" and name.endswith("*") for name, precision in patterns)
    prefixes = [name[:-1] for name, _ in patterns]
    assert prefixes == [f"/{step}/" for step in FP32_STEPS]

    graph = onnx.load(str(model_onnx), load_external_data=False).graph
    covered = [node for node in graph.node if node.name.startswith(tuple(prefixes))]
    for prefix in prefixes:
        assert any(node.name.startswith(prefix) and node.op_type in ("Sub", "Div", "Mul", "Add") for node in covered)
    readers = {node.name for node in graph.node
               if {"state", "state_norm", "action_norm"} & set(node.input) and node.op_type != "Shape"}
    assert readers and all(name.startswith(tuple(prefixes)) for name in readers), readers
    (last,) = [node for node in graph.node if "actions" in node.output]
    assert last.name.startswith(f"/{FP32_STEPS[-1]}/")


@needs_bash
def test_engine_build_is_skipped_while_the_plan_is_newer(tmp_path):
    build = EngineBuild(tmp_path)
    assert build.run().returncode == 0
    os.utime(build.onnx, (1_000_000, 1_000_000))  # the plan is now newer

    result = build.run()
    assert result.returncode == 0, result.stderr
    assert not build.args_file.exists(), "trtexec ran although the plan is up to date"

    os.utime(build.plan, (500_000, 500_000))  # a newer export
    assert build.run().returncode == 0
    assert build.args_file.exists(), "trtexec did not run for a newer model.onnx"


@needs_bash
def test_failed_engine_build_leaves_no_plan(tmp_path):
    build = EngineBuild(tmp_path)
    result = build.run(TRTEXEC_EXIT="1")
    assert result.returncode != 0
    assert "trtexec failed" in result.stderr
    assert list(build.plan.parent.glob("model.plan*")) == []


@needs_bash
def test_engine_build_without_onnx_says_what_to_do(tmp_path):
    build = EngineBuild(tmp_path)
    build.onnx.unlink()
    result = build.run()
    assert result.returncode != 0
    assert "make export" in result.stderr
    assert not build.args_file.exists()
