"""Policy-core actions -> DROID actions; settings in config.pbtxt (see openpi_policy.pipeline)."""

from openpi_policy.triton_python import PostprocessModel as TritonPythonModel  # noqa: F401
