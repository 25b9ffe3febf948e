"""The Kubernetes deployment (deploy/kubernetes), checked without a cluster.

Both overlays are rendered with `kubectl kustomize`, every rendered object is validated offline
against the Kubernetes JSON schemas that the kubernetes-validate package bundles (strict: unknown
fields are errors), and then held to the code: the front's flags, environment variables, probe
paths and ports must be ones `openpi-triton serve` and the app really have, and the objects must
point at each other (Service -> pods, --triton-url -> headless Service, NetworkPolicy -> pods).
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from openpi_triton import config
from openpi_triton.config import Settings

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
IMAGES = KUBERNETES / "images"
OVERLAYS = ("cpu", "gpu")
# A release kubernetes-validate bundles schemas for; the manifests use nothing newer.
KUBERNETES_VERSION = "1.31"
ENV_PREFIX = "OPENPI_TRITON_"
# Triton's documented HTTP health routes (KServe v2 protocol) and its default ports.
TRITON_LIVE, TRITON_READY = "/v2/health/live", "/v2/health/ready"
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
FRONT, TRITON = "openpi-front", "openpi-triton"
EXPECTED_OBJECTS = {
    ("Deployment", FRONT), ("Service", FRONT), ("HorizontalPodAutoscaler", FRONT), ("PodDisruptionBudget", FRONT),
    ("Deployment", TRITON), ("Service", TRITON), ("NetworkPolicy", TRITON), ("PodDisruptionBudget", TRITON),
}
COMMON_LABELS = {"app.kubernetes.io/part-of": "openpi-triton"}

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed: cannot render deploy/kubernetes")


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([KUBECTL, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]


def pod_labels(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, str]:
    return find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


def container(spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    containers = spec.get("initContainers" if init else "containers", [])
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1, f"expected one {'init ' if init else ''}container {name}, found {len(matches)}"
    return matches[0]


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    assert port in named, f"container {c['name']} has no port named {port!r}"
    return named[port]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def command_line(c: dict[str, Any]) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def option(argv: list[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value` in argv (the last one wins, as in argparse)."""
    value = None
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value


def serve_argv(objects: tuple[dict[str, Any], ...]) -> list[str]:
    argv = command_line(container(pod_spec(objects, FRONT), "front"))
    assert argv[:2] == ["openpi-triton", "serve"], argv
    return argv[2:]


# --- rendering and schemas ------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay):
    objects = render(overlay)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED_OBJECTS
    # The Secret with the API keys is the user's to create; the namespace is the user's to pick.
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert [o["metadata"]["name"] for o in objects if "namespace" in o["metadata"]] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_common_labels_on_objects_and_pods_but_not_selectors(overlay):
    objects = render(overlay)
    for o in objects:
        assert COMMON_LABELS.items() <= o["metadata"].get("labels", {}).items(), o["metadata"]["name"]
    for name in (FRONT, TRITON):
        deployment = find(objects, "Deployment", name)
        assert COMMON_LABELS.items() <= pod_labels(objects, name).items()
        # Selectors are immutable: a common label in them would make later label changes unappliable.
        assert not COMMON_LABELS.keys() & deployment["spec"]["selector"]["matchLabels"].keys()


@pytest.fixture(scope="module")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra)")


def _schema_errors(kubernetes_validate, document: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.path)) or "<root>"
        return [f"{document['kind']}/{document['metadata']['name']}: {where}: {error.message}"]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_follows_the_kubernetes_schema(overlay, kubernetes_validate):
    # SchemaNotFoundError (a kind or apiVersion the release does not have) fails the test too.
    errors = [e for o in render(overlay) for e in _schema_errors(kubernetes_validate, o)]
    assert errors == []


def test_the_schema_catches_mistakes(kubernetes_validate):
    objects = render("gpu")
    broken = yaml.safe_load(yaml.safe_dump(find(objects, "Deployment", FRONT)))
    probe = container(broken["spec"]["template"]["spec"], "front")["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")  # strict: an unknown field is an error
    assert any("httpGett" in e for e in _schema_errors(kubernetes_validate, broken))

    hpa = yaml.safe_load(yaml.safe_dump(find(objects, "HorizontalPodAutoscaler", FRONT)))
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
    assert _schema_errors(kubernetes_validate, hpa)


def test_example_api_key_secret(kubernetes_validate):
    example = yaml.safe_load((KUBERNETES / "base" / "api-keys.example.yaml").read_text())
    assert _schema_errors(kubernetes_validate, example) == []
    ref = next(e for e in container(pod_spec(render("gpu"), FRONT), "front")["env"]
               if e["name"] == "OPENPI_TRITON_API_KEYS")["valueFrom"]["secretKeyRef"]
    assert example["metadata"]["name"] == ref["name"] and ref["key"] in example["stringData"]
    assert "REPLACE-ME" in example["stringData"][ref["key"]], "the example must carry an obviously fake key"
    kustomization = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())
    assert "api-keys.example.yaml" not in kustomization.get("resources", [])


# --- the front, held to the code ------------------------------------------------------------------
# Imported in fixtures, so that rendering and schema checks do not depend on importing the app.

@pytest.fixture(scope="module")
def build_parser():
    from openpi_triton.cli import build_parser

    return build_parser


def _serve_parser(build_parser) -> argparse.ArgumentParser:
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["serve"]


def _serve_flags(build_parser) -> set[str]:
    return {s for action in _serve_parser(build_parser)._actions for s in action.option_strings if s.startswith("--")}


@pytest.fixture(scope="module")
def routes() -> set[str]:
    from openpi_triton.config import Settings
    from openpi_triton.front.app import create_app

    return {route.path for route in create_app(Settings(triton_url="localhost:1")).routes}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_front_flags_are_serve_options(overlay, build_parser):
    argv = serve_argv(render(overlay))
    flags = {word.split("=", 1)[0] for word in argv if word.startswith("--")}
    assert flags, argv
    unknown = flags - _serve_flags(build_parser)
    assert not unknown, f"not options of `openpi-triton serve`: {unknown}"
    # The values parse too (types, choices), and the cluster never uses shared memory across pods.
    try:
        args = _serve_parser(build_parser).parse_args(argv)
    except SystemExit:
        pytest.fail(f"`openpi-triton serve` rejects {argv} (argparse's message is above)")
    assert args.triton_shared_memory == "off"
    assert args.triton_url


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_front_environment_variables_are_serve_flags(overlay, build_parser, monkeypatch):
    env = container(pod_spec(render(overlay), FRONT), "front").get("env", [])
    names = [e["name"] for e in env if e["name"].startswith(ENV_PREFIX)]
    assert "OPENPI_TRITON_API_KEYS" in names
    known = {ENV_PREFIX + flag[2:].upper().replace("-", "_") for flag in _serve_flags(build_parser)}
    assert set(names) <= known, f"no serve flag reads {set(names) - known}"
    for e in env:
        if e["name"] == "OPENPI_TRITON_API_KEYS":
            assert "value" not in e and e["valueFrom"]["secretKeyRef"], "API keys must come from a Secret"
        elif "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    build_parser()  # the values are read (and type-checked) when the parser is built


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_front_probes_and_ports(overlay, routes):
    objects = render(overlay)
    spec = pod_spec(objects, FRONT)
    front = container(spec, "front")
    port = int(option(serve_argv(objects), "--port"))
    assert [p["containerPort"] for p in front["ports"]] == [port]
    probes = {kind: front[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    for get in probes.values():
        assert get["path"] in routes, f"{get['path']} is not a route of the app"
        assert port_number(front, get["port"]) == port
    # /readyz answers from state refreshed in the background: a probe at most as often as that, and the
    # probe's own timeout (Kubernetes' default 1 s) never spent waiting on Triton.
    readiness = front["readinessProbe"]
    assert readiness.get("timeoutSeconds", 1) <= 1 and readiness["periodSeconds"] >= config.READINESS_REFRESH_S
    service = find(objects, "Service", FRONT)
    assert selects(service["spec"]["selector"], pod_labels(objects, FRONT))
    assert not selects(service["spec"]["selector"], pod_labels(objects, TRITON))
    assert [port_number(front, p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    # The drain must finish before the kubelet's SIGKILL, with time left for the process to exit.
    drain = option(serve_argv(objects), "--drain-timeout")
    drain_s = float(drain) if drain is not None else Settings().drain_timeout_s
    assert spec["terminationGracePeriodSeconds"] >= drain_s + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_front_reaches_triton_through_the_headless_service(overlay):
    objects = render(overlay)
    host, _, port = option(serve_argv(objects), "--triton-url").rpartition(":")
    service = find(objects, "Service", host)
    assert service["spec"].get("clusterIP") == "None"
    assert selects(service["spec"]["selector"], pod_labels(objects, TRITON))
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == int(port)
    assert port_number(container(pod_spec(objects, TRITON), "triton"), grpc["targetPort"]) == TRITON_PORTS["grpc"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_front_autoscaling_and_disruption_budget(overlay):
    objects = render(overlay)
    hpa = find(objects, "HorizontalPodAutoscaler", FRONT)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FRONT}
    assert [(m["type"], m["resource"]["name"], m["resource"]["target"]["type"]) for m in hpa["metrics"]] == [
        ("Resource", "cpu", "Utilization")]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # The HPA owns the count: a fixed one in the Deployment would reset it on every apply.
    assert "replicas" not in find(objects, "Deployment", FRONT)["spec"]
    # Utilisation is measured against the request: without one the HPA cannot scale.
    assert container(pod_spec(objects, FRONT), "front")["resources"]["requests"]["cpu"]
    pdb = find(objects, "PodDisruptionBudget", FRONT)["spec"]
    assert selects(pdb["selector"]["matchLabels"], pod_labels(objects, FRONT))
    assert not selects(pdb["selector"]["matchLabels"], pod_labels(objects, TRITON))


# --- Triton ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_replicas_survive_a_node_going_down(overlay):
    """The front routes over every address of the headless Service: two replicas, preferably on two
    nodes, and evictions that take one of them at a time."""
    objects = render(overlay)
    deployment = find(objects, "Deployment", TRITON)["spec"]
    assert deployment["replicas"] >= 2
    [term] = pod_spec(objects, TRITON)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels(objects, TRITON))
    pdb = find(objects, "PodDisruptionBudget", TRITON)["spec"]
    assert pdb["maxUnavailable"] == 1 < deployment["replicas"]
    assert selects(pdb["selector"]["matchLabels"], pod_labels(objects, TRITON))
    assert not selects(pdb["selector"]["matchLabels"], pod_labels(objects, FRONT))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_ports_and_shared_memory(overlay):
    spec = pod_spec(render(overlay), TRITON)
    triton = container(spec, "triton")
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == TRITON_PORTS
    assert triton["livenessProbe"]["httpGet"]["path"] == TRITON_LIVE
    assert triton["readinessProbe"]["httpGet"]["path"] == TRITON_READY
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = triton[kind]["httpGet"]
        assert get["path"] in (TRITON_LIVE, TRITON_READY)
        assert port_number(triton, get["port"]) == TRITON_PORTS["http"]
    assert not [w for w in command_line(triton) if w.startswith(("--http-port", "--grpc-port", "--metrics-port"))]
    # The python backend needs a /dev/shm larger than the container runtime's 64 MB default.
    shm = next(m["name"] for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert next(v for v in spec["volumes"] if v["name"] == shm)["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_serves_the_repository_its_init_container_copies(overlay):
    spec = pod_spec(render(overlay), TRITON)
    triton = container(spec, "triton")
    repository = option(command_line(triton), "--model-repository")
    assert repository, command_line(triton)
    volume = {Path(m["mountPath"]): m["name"] for m in triton["volumeMounts"]}.get(Path(repository).parent)
    assert volume, f"{repository} is not in a volume of the triton container"
    copy = container(spec, "model-repository", init=True)
    assert spec["initContainers"][0] is copy, "the repository must be copied before anything uses it"
    *sources, destination = copy["command"][copy["command"].index("-a") + 1:]
    # The init container writes into that volume, at the path Triton reads.
    assert {Path(m["mountPath"]): m["name"] for m in copy["volumeMounts"]}.get(Path(destination)) == volume
    assert Path(repository) in {Path(destination, Path(source).name) for source in sources}
    # The image puts these paths where the init container copies them from.
    dockerfile = (IMAGES / "model-repository.Dockerfile").read_text()
    for source in sources:
        assert re.search(rf"^COPY\s+\S+\s+{re.escape(source)}\s*$", dockerfile, re.MULTILINE), source


def test_cpu_overlay_runs_the_cpu_configuration_without_a_gpu():
    spec = pod_spec(render("cpu"), TRITON)
    argv = command_line(container(spec, "triton"))
    assert "--model-config-name=cpu" in argv
    every = [*spec.get("initContainers", []), *spec["containers"]]
    assert not [c["name"] for c in every if "nvidia.com/gpu" in str(c.get("resources", {}))]
    assert [c["name"] for c in spec.get("initContainers", [])] == ["model-repository"]
    assert container(spec, "triton")["image"].startswith("openpi-triton/triton-cpu:")


def test_gpu_overlay_builds_the_engine_and_takes_one_gpu():
    spec = pod_spec(render("gpu"), TRITON)
    triton = container(spec, "triton")
    assert not [w for w in command_line(triton) if w.startswith("--model-config-name")]
    assert int(triton["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert int(triton["resources"]["requests"]["nvidia.com/gpu"]) == 1
    # The engine is built after the copy, on the same GPU model Triton runs on.
    assert [c["name"] for c in spec["initContainers"]] == ["model-repository", "engine"]
    engine = container(spec, "engine", init=True)
    assert int(engine["resources"]["limits"]["nvidia.com/gpu"]) == 1
    repository = option(command_line(triton), "--model-repository")
    assert engine["command"][-1] == f"{repository}/policy_core"
    # A TensorRT plan only loads in the TensorRT release that built it.
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "docker" / "triton.Dockerfile").read_text(), re.MULTILINE)
    assert base and base.group(1).startswith("nvcr.io/nvidia/tritonserver:")
    assert engine["image"].rsplit(":", 1)[1].split("-")[0] == base.group(1).rsplit(":", 1)[1].split("-")[0]
    assert triton["image"].startswith("openpi-triton/triton:")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_front_pods_reach_triton(overlay):
    objects = render(overlay)
    policy = find(objects, "NetworkPolicy", TRITON)["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(objects, TRITON))
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}, "only pods of this namespace, no ipBlock or namespaceSelector"
    assert selects(peer["podSelector"]["matchLabels"], pod_labels(objects, FRONT))
    assert not selects(peer["podSelector"]["matchLabels"], pod_labels(objects, TRITON))
    triton = container(pod_spec(objects, TRITON), "triton")
    assert [port_number(triton, p["port"]) for p in rule["ports"]] == [TRITON_PORTS["grpc"]]


# --- the images the overlays name -----------------------------------------------------------------

def test_image_dockerfiles_copy_what_their_ignore_files_let_in():
    dockerfile = IMAGES / "model-repository.Dockerfile"
    ignore = (IMAGES / "model-repository.Dockerfile.dockerignore").read_text().splitlines()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            for source in words[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert f"!{source}" in ignore, f"COPY {source} is not let in by the Dockerfile's ignore file"


def test_cpu_triton_image_is_the_triton_image_plus_onnxruntime():
    text = (IMAGES / "triton-cpu.Dockerfile").read_text()
    default = re.search(r"^ARG\s+TRITON_IMAGE=(\S+)", text, re.MULTILINE)
    assert default and re.search(r"^FROM\s+\$\{?TRITON_IMAGE\}?\s*$", text, re.MULTILINE)
    assert default.group(1) == container(pod_spec(render("gpu"), TRITON), "triton")["image"]
    assert re.search(r"pip install .*onnxruntime", text)
