"""Sleeps for the largest requested delay once per execution, then echoes each delay and the sum of
each request's payload bytes."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        delays = [pb_utils.get_input_tensor_by_name(r, "delay").as_numpy() for r in requests]
        sums = [pb_utils.get_input_tensor_by_name(r, "payload").as_numpy().sum(axis=-1, dtype=np.int64)[:, None]
                for r in requests]
        time.sleep(max(float(d.max()) for d in delays))
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("echo", d), pb_utils.Tensor("payload_sum", s)])
            for d, s in zip(delays, sums, strict=True)
        ]
