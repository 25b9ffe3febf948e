"""Policy core on CPU: model.onnx in ONNX Runtime (see openpi_policy.triton_python)."""

from openpi_policy.triton_python import OnnxRuntimeModel as TritonPythonModel  # noqa: F401
