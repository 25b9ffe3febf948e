"""Counts the calls of each Triton sequence and forgets a sequence when it ends; echoes the request id
the front gave each inference."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.steps = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            sequence, start, end = (
                int(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])
                for name in ("CORRID", "START", "END")
            )
            if start:
                self.steps[sequence] = 0
            self.steps[sequence] = self.steps.get(sequence, 0) + 1
            step = self.steps[sequence]
            if end:
                del self.steps[sequence]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("step", np.array([[step]], np.int64)),
                pb_utils.Tensor("live_sequences", np.array([[len(self.steps)]], np.int64)),
                pb_utils.Tensor("request_id", np.array([[request.request_id().encode()]], dtype=object)),
            ]))
        return responses
