"""The Triton python-backend model of a LeRobot checkpoint: each `execute` runs LeRobot's preprocessor,
`predict_action_chunk` and postprocessor once on all of its requests (`runner.LeRobotRunner`).

Parameters (written by `openpi-triton serve --lerobot-policy`, see openpi_triton.triton.lerobot_repository):
    lerobot_checkpoint  the PATH or Hub id
    lerobot_plan        JSON: checkpoint feature -> the model inputs that make it (`batch.assemble`)
    lerobot_tokenizer   a tokenizer to load instead of the one the saved preprocessor names ("" = none)
    lerobot_plugins     JSON list of modules / .py files imported first (`checkpoint.import_plugins`)
    lerobot_device      "" = CUDA on a GPU instance, else the CPU; or a torch device
Inputs: the plan's inputs, `seed` (INT64 [1]) and the real-time chunking inputs of each row (`rtc.RTC_INPUTS`:
`rtc_leftover` FP32 [chunk_size, action_dim] in the robot's units, `rtc_length` INT64 [1], 0 = no RTC, and
`rtc_delay` INT64 [1]); output `actions` FP32 [chunk_size, action_dim].

This module imports `triton_python_backend_utils`, which exists only inside Triton's python stub.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_policy.lerobot.batch import same_shapes, stack_requests
from openpi_policy.lerobot.rtc import DELAY, LENGTH, check_rows
from openpi_policy.lerobot.runner import LeRobotRunner


def _parameter(config: dict[str, Any], key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class LeRobotModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        device = _parameter(config, "lerobot_device") or None
        if device is None and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.runner = LeRobotRunner.from_checkpoint(
            _parameter(config, "lerobot_checkpoint"), device=device or "cpu",
            tokenizer=_parameter(config, "lerobot_tokenizer") or None,
            plugins=tuple(json.loads(_parameter(config, "lerobot_plugins", "[]"))),
            plan=json.loads(_parameter(config, "lerobot_plan")),
        )
        self.input_names = [spec["name"] for spec in config["input"]]
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.runner.description}")

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        try:
            inputs = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
                      for request in requests]
        except Exception as error:
            return [_error(error) for _ in requests]
        responses: list[Any] = [None] * len(requests)
        # A request with RTC inputs that make no sense fails alone, not the batch it would have joined.
        for index, request_inputs in enumerate(inputs):
            try:
                check_rows(request_inputs[LENGTH].reshape(-1).tolist(), request_inputs[DELAY].reshape(-1).tolist(),
                           self.runner.chunk_size)
            except (KeyError, ValueError) as error:
                responses[index] = _error(error)
        valid = [index for index, response in enumerate(responses) if response is None]
        # Requests whose cameras differ in size cannot share a tensor: one LeRobot call per shape.
        for shape_group in same_shapes([inputs[i] for i in valid]):
            group = [valid[i] for i in shape_group]
            try:
                stacked = stack_requests([inputs[i] for i in group])
                actions = self.runner(stacked, stacked["seed"].reshape(-1).tolist())
            except Exception as error:  # one bad batch must not take the model down
                for index in group:
                    responses[index] = _error(error)
                continue
            start = 0
            for index in group:
                rows = len(inputs[index]["seed"])
                tensor = pb_utils.Tensor("actions", np.ascontiguousarray(actions[start:start + rows]))
                responses[index] = pb_utils.InferenceResponse(output_tensors=[tensor])
                start += rows
        return responses


def _error(error: Exception) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(error).__name__}: {error}"))
