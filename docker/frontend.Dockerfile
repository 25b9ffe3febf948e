# The websocket front: this package on a slim Python, talking to Triton over gRPC. No GPU, no model,
# no benchmark code (benchmarks/ is run from a checkout).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /tmp/openpi-triton/
COPY openpi_triton /tmp/openpi-triton/openpi_triton
COPY openpi_policy /tmp/openpi-triton/openpi_policy
RUN pip install "/tmp/openpi-triton[gr00t]" && rm -rf /tmp/openpi-triton

# The front needs no privileges: it only listens on an unprivileged port.
RUN useradd --system --no-create-home openpi
USER openpi

EXPOSE 8000
CMD ["openpi-triton", "serve", "--triton-url", "triton:8001", "--host", "0.0.0.0", "--port", "8000"]
