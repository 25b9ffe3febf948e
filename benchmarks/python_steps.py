"""One python step per format or two? The measurement behind the ensembles' shape.

The shipped ensemble is `<format>_preprocess` -> `policy_core`, and the front cuts the robot's horizon
and dims out of the core's [50, 32] actions (the `slice` in `output_map`). The alternative keeps a
python step after the core that does that slicing. Both run side by side in one tritonserver (the
shipped ensemble, and a copy with the extra step), and one robot calls them in turn over gRPC, closed
loop, so that both are measured over the same minutes of a machine whose speed drifts.

    python -m benchmarks.python_steps [--format libero] [--calls 500]

Prints JSON: p50 of each, the median per-round difference (two steps minus one) with its IQR, and
Triton's own per-request time of the extra step.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.arguments import add_flags
from openpi_triton.config import core_onnx_path
from openpi_triton.example_observations import make_observations
from openpi_triton.front.codec import flatten
from openpi_triton.front.observations import observation_to_tensors, unbatch
from openpi_triton.process import free_port
from openpi_triton.triton.embedded import EmbeddedTriton
from openpi_triton.triton.grpc_tensors import infer_inputs
from openpi_triton.triton.policy import Policy
from openpi_triton.triton.repository import policy_from_repository

# The extra step: what a python postprocess that only slices costs (its own process round trip).
SLICE_MODEL = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.horizon, self.dim = (int(d) for d in config["output"][0]["dims"])

    def execute(self, requests):
        responses = []
        for request in requests:
            actions = pb_utils.get_input_tensor_by_name(request, "actions").as_numpy()
            sliced = np.ascontiguousarray(actions[:, : self.horizon, : self.dim])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("actions", sliced)]))
        return responses
'''


def two_step_repository(source: Path, policy: str, target: Path) -> tuple[str, str]:
    """`target` with the shipped `policy` and a copy that slices in a python step; returns their names."""
    for name in (policy, f"{policy}_preprocess", "policy_core"):
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("model.onnx", "model.plan",
                                                                                     "__pycache__"))
    (target / "policy_core" / "1" / "model.onnx").symlink_to(core_onnx_path(source).resolve())
    shipped = policy_from_repository(source, policy)
    horizon, dim = shipped.slices["actions"]
    two, slicer = f"{policy}_two_steps", f"{policy}_slice"
    (target / slicer / "1").mkdir(parents=True)
    (target / slicer / "1" / "model.py").write_text(SLICE_MODEL)
    (target / slicer / "config.pbtxt").write_text(
        f'name: "{slicer}"\nbackend: "python"\nmax_batch_size: 16\n'
        'input [ { name: "actions" data_type: TYPE_FP32 dims: [ 50, 32 ] } ]\n'
        f'output [ {{ name: "actions" data_type: TYPE_FP32 dims: [ {horizon}, {dim} ] }} ]\n'
        'instance_group [ { kind: KIND_CPU count: 1 } ]\ndynamic_batching { }\n')
    text = (source / policy / "config.pbtxt").read_text().replace(f'name: "{policy}"', f'name: "{two}"')
    text = re.sub(r'output \[ \{ name: "actions" data_type: TYPE_FP32 dims: \[ 50, 32 \] \} \]',
                  f'output [ {{ name: "actions" data_type: TYPE_FP32 dims: [ {horizon}, {dim} ] }} ]', text)
    text = re.sub(r"key: \"output_map\"\s*value \{ string_value: '[^']*' \}",
                  'key: "output_map" value { string_value: \'{"actions": "actions"}\' }', text)
    last_step = '      output_map { key: "actions" value: "actions" }\n    }'
    if last_step not in text:
        raise ValueError(f"{policy}/config.pbtxt: its last step does not write 'actions' as expected")
    text = text.replace(last_step, '      output_map { key: "actions" value: "core_actions" }\n    },\n'
                        f'    {{\n      model_name: "{slicer}"\n      model_version: -1\n'
                        '      input_map { key: "actions" value: "core_actions" }\n'
                        '      output_map { key: "actions" value: "actions" }\n    }')
    (target / two / "1").mkdir(parents=True)
    (target / two / "config.pbtxt").write_text(text)
    return policy, two


def measure(model_repository: Path, policy: str, fmt: str, calls: int, warmup: int = 20) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        one_name, two_name = two_step_repository(model_repository, policy, repository)
        with EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port()) as triton:
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            one, two = (policy_from_repository(repository, name) for name in (one_name, two_name))
            observations = [flatten(obs) for obs in make_observations(fmt, 8)]  # as the front flattens them

            def answer(target: Policy, index: int, seed: int | None = None) -> tuple[float, np.ndarray]:
                tensors = observation_to_tensors(target, observations[index % len(observations)], seed)
                started = time.perf_counter()
                result = client.infer(target.name, infer_inputs(tensors),
                                      outputs=[grpcclient.InferRequestedOutput("actions")])
                actions = unbatch(target, {"actions": result.as_numpy("actions")})["actions"]  # the front's slice
                return (time.perf_counter() - started) * 1000, actions

            def call(target: Policy, index: int) -> float:
                return answer(target, index)[0]

            # Like with like: for one observation and seed, both give the robot the same actions.
            if not np.array_equal(answer(one, 0, seed=7)[1], answer(two, 0, seed=7)[1]):
                raise RuntimeError(f"{one_name} and {two_name} answer differently")
            for index in range(warmup):
                call(one, index)
                call(two, index)
            before = client.get_inference_statistics(f"{policy}_slice").model_stats[0].inference_stats
            one_ms, two_ms = [], []
            for index in range(calls):  # alternate which goes first, so neither always follows the other
                pair = (one, two) if index % 2 else (two, one)
                for target in pair:
                    (one_ms if target is one else two_ms).append(call(target, index))
            after = client.get_inference_statistics(f"{policy}_slice").model_stats[0].inference_stats
    extra = (after.success.ns - before.success.ns) / max(after.success.count - before.success.count, 1) / 1e6
    difference = np.array(two_ms) - np.array(one_ms)
    return {
        "format": fmt, "policy": policy, "calls": calls,
        "one_python_step_p50_ms": float(np.median(one_ms)), "two_python_steps_p50_ms": float(np.median(two_ms)),
        "two_minus_one_median_ms": float(np.median(difference)),
        "two_minus_one_iqr_ms": [float(np.percentile(difference, 25)), float(np.percentile(difference, 75))],
        "extra_step_triton_ms_per_request": extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "model-repository", "format", "policy")
    parser.add_argument("--calls", type=int, default=500, help="rounds of one call to each")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model_repository, args.policy or args.format, args.format, args.calls), indent=1))


if __name__ == "__main__":
    main()
