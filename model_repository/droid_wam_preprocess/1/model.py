"""droid_wam observation + its session's camera history -> policy-core tensors (see openpi_policy.history)."""

from openpi_policy.triton_python import HistoryPreprocessModel as TritonPythonModel  # noqa: F401
