"""Where a request's time goes inside Triton: per-model statistics (queue, compute, batch sizes) over a
benchmark window, from the statistics API (`get_inference_statistics`), as before/after deltas."""

from __future__ import annotations

from typing import Any

PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")
Snapshot = dict[str, dict[str, Any]]


class TritonStats:
    """Statistics of one ensemble and the models its steps call."""

    def __init__(self, triton_url: str, policy: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(triton_url)
        config = self.client.get_model_config(policy, as_json=True)["config"]
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        self.models = [policy, *dict.fromkeys(step["model_name"] for step in steps)]

    def snapshot(self) -> Snapshot:
        stats = self.client.get_inference_statistics("", as_json=True).get("model_stats", [])
        by_name = {entry["name"]: entry for entry in stats}
        return {name: by_name[name] for name in self.models if name in by_name}  # ensemble first, then its steps

    def close(self) -> None:
        self.client.close()


def _count_ns(entry: dict[str, Any], phase: str) -> tuple[int, int]:
    value = entry.get("inference_stats", {}).get(phase, {})
    return int(value.get("count", 0)), int(value.get("ns", 0))


def _batches(entry: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """batch size -> (executions, compute ns) of one model."""
    batches = {}
    for entry_batch in entry.get("batch_stats", []):
        compute = entry_batch.get("compute_infer", {})
        batches[int(entry_batch["batch_size"])] = (int(compute.get("count", 0)), int(compute.get("ns", 0)))
    return batches


def model_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One model's activity between two snapshots: per-request phase times and executions by batch size.

    Triton charges each request of a batch the whole batch's compute time, so `compute_infer` per
    request is the duration of the executions it was part of; `batches` gives per-execution times.
    """
    ms_per_request = {}
    for phase in PHASES:
        count = _count_ns(after, phase)[0] - _count_ns(before, phase)[0]
        ns = _count_ns(after, phase)[1] - _count_ns(before, phase)[1]
        ms_per_request[phase] = ns / count / 1e6 if count else 0.0
    requests = _count_ns(after, "success")[0] - _count_ns(before, "success")[0]
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    old = _batches(before)
    batches = {}
    for size, (count, ns) in sorted(_batches(after).items()):
        d_count, d_ns = count - old.get(size, (0, 0))[0], ns - old.get(size, (0, 0))[1]
        if d_count:
            batches[size] = {"executions": d_count, "ms_per_execution": d_ns / d_count / 1e6}
    return {
        "requests": requests, "executions": executions,
        "avg_batch": inferences / executions if executions else 0.0,
        "ms_per_request": ms_per_request, "batches": batches,
    }


def delta(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    return {name: model_delta(before.get(name, {}), entry) for name, entry in after.items()}
