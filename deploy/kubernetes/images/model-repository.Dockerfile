# The model repository as an image: each Triton pod's init container copies it into the pod
# (deploy/kubernetes/base/triton.yaml). The tag versions the model; a new model is a new tag.
# From the repository root, after `make export` (model.onnx is exported, never committed):
#   docker build -f deploy/kubernetes/images/model-repository.Dockerfile -t openpi-triton/model-repository:0.1.0 .
# BuildKit (Docker 23+) reads model-repository.Dockerfile.dockerignore beside this file instead of
# the root .dockerignore, which keeps model_repository out of the other images.
FROM busybox:1.36

COPY model_repository /model_repository
# The GPU overlay's engine init container (a TensorRT image) runs it from the pod's copy.
COPY docker/build_engine.sh /opt/openpi/build_engine.sh

# Fail the build, not the pod: without model.onnx Triton would start with no policy core.
RUN test -s /model_repository/policy_core/1/model.onnx \
    || { echo "model_repository/policy_core/1/model.onnx is missing: run 'make export' first" >&2; exit 1; }
