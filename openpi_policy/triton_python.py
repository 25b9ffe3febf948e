"""Triton python-backend models, kept here so each `model.py` in the repository is one import.

Every model handles all the requests of one `execute` call as a single batch: inputs are stacked,
the work runs once, and the outputs are split back per request. An exception fails every request
of that call with a Triton error (the server and other calls are unaffected).

This module imports `triton_python_backend_utils`, which exists only inside Triton's python stub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_policy.core import OnnxRuntimeCore
from openpi_policy.pipeline import Preprocessor


def _model_dir(args: dict[str, str]) -> Path:
    return Path(args["model_repository"])


def _run_batched(
    requests: Sequence[Any],
    input_names: Sequence[str],
    output_names: Sequence[str],
    work: Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]],
) -> list[Any]:
    inputs = [
        {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in input_names}
        for request in requests
    ]
    try:
        outputs = work(inputs)
    except Exception as error:  # one bad batch must not take the model down
        message = pb_utils.TritonError(f"{type(error).__name__}: {error}")
        return [pb_utils.InferenceResponse(error=message) for _ in requests]

    responses, start = [], 0
    for request_inputs in inputs:
        size = len(next(iter(request_inputs.values())))
        tensors = [pb_utils.Tensor(name, outputs[name][start : start + size]) for name in output_names]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        start += size
    return responses


class PreprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.preprocessor = Preprocessor.from_model_config(config, _model_dir(args))
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return _run_batched(requests, self.preprocessor.input_names, self.output_names, self.preprocessor)


class OnnxRuntimeModel:
    """The policy core on CPU: `model.onnx` in ONNX Runtime, one session run per `execute`."""

    def initialize(self, args: dict[str, str]) -> None:
        self.core = OnnxRuntimeCore(_model_dir(args) / args["model_version"] / "model.onnx")

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        def work(inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            if len(inputs) == 1:  # a lone robot: its tensors as they are, no concatenated copy
                return {"actions": self.core(inputs[0])}
            feeds = {name: np.concatenate([i[name] for i in inputs]) for name in self.core.input_names}
            return {"actions": self.core(feeds)}

        return _run_batched(requests, self.core.input_names, ["actions"], work)
