"""Sleeps for the largest requested delay once per execution, then echoes each delay."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        delays = [pb_utils.get_input_tensor_by_name(r, "delay").as_numpy() for r in requests]
        time.sleep(max(float(d.max()) for d in delays))
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("echo", d)]) for d in delays]
