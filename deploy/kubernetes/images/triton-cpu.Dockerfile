# Triton for the CPU overlay: the image from docker/triton.Dockerfile plus ONNX Runtime, which the
# policy core's CPU configuration (configs/cpu.pbtxt -> 1/model.py) imports inside the python
# backend. The GPU image does not need it (the policy core there is a TensorRT plan).
#   docker build -f docker/triton.Dockerfile -t openpi-triton/triton:0.1.0 .
#   docker build -f deploy/kubernetes/images/triton-cpu.Dockerfile -t openpi-triton/triton-cpu:0.1.0 \
#     --build-arg TRITON_IMAGE=openpi-triton/triton:0.1.0 deploy/kubernetes/images
ARG TRITON_IMAGE=openpi-triton/triton:0.1.0
FROM ${TRITON_IMAGE}

# The pyproject's `embedded` requirement; numpy restated so pip keeps the project's numpy<2.
# On the image's Python 3.10, pip picks the newest onnxruntime that still ships a 3.10 wheel.
RUN pip install --no-cache-dir "onnxruntime>=1.18" "numpy>=1.24,<2"
