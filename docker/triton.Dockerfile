# Triton for the GPU host: the stock 24.10 server (Triton 2.51, the release the project is tested
# against) plus what the python-backend models in model_repository/ import.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# Installed into the system site-packages rather than put on PYTHONPATH: the python backend's stub
# starts its interpreter in isolated mode, which ignores PYTHONPATH.
# numpy<2: the project's pin (openpi-client needs it), so pre/post-processing match the CPU path.
RUN pip install --no-cache-dir "numpy>=1.24,<2" "pillow>=10"

# Only openpi_policy is copied: the python models import nothing else from this repository, and
# --no-deps keeps the front's dependencies (and their versions) out of the server image.
COPY pyproject.toml README.md /tmp/openpi-triton/
COPY openpi_policy /tmp/openpi-triton/openpi_policy
RUN pip install --no-cache-dir --no-deps /tmp/openpi-triton && rm -rf /tmp/openpi-triton
