"""SO-100 (GR00T-shaped) observation -> policy-core tensors; settings in config.pbtxt (see openpi_policy.pipeline)."""

from openpi_policy.triton_python import PreprocessModel as TritonPythonModel  # noqa: F401
