"""Policy core: ONNX Runtime (configs/cpu.pbtxt) or PyTorch (configs/gpu_torch.pbtxt); see openpi_policy.core."""

from openpi_policy.triton_python import PolicyCoreModel as TritonPythonModel  # noqa: F401
