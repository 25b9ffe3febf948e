#!/usr/bin/env bash
# Builds the policy core's TensorRT engine (1/model.plan) from 1/model.onnx with trtexec.
# Run by the compose service `engine` before tritonserver starts; usable by hand too:
#   build_engine.sh [POLICY_CORE_DIR]      (default /models/policy_core)
# Delete 1/model.plan to force a rebuild: a plan only runs on the GPU model and TensorRT version
# that built it, so a plan copied from another host must be rebuilt.
set -euo pipefail

model_dir=${1:-/models/policy_core}
onnx=$model_dir/1/model.onnx
plan=$model_dir/1/model.plan
config=$model_dir/config.pbtxt

# Per-example shape of every policy-core input (the batch axis is added below). They must match the
# input dims in config.pbtxt; tests/test_compose.py checks that they do.
INPUTS=(
  images:3x3x224x224
  image_masks:3
  state:32
  tokens:48
  token_mask:48
  noise:50x32
)

die() { echo "build_engine: $*" >&2; exit 1; }

[[ -f $onnx ]] || die "$onnx not found. Export it on the host first: make export"
[[ -f $config ]] || die "$config not found"

if [[ -f $plan && $plan -nt $onnx ]]; then
  echo "build_engine: $plan is newer than $onnx, nothing to build (delete the plan to rebuild)"
  exit 0
fi

# The engine's largest batch must be Triton's max_batch_size: Triton refuses to load an engine whose
# profile is smaller, and anything larger only wastes build time and GPU memory.
max_batch=$(sed -n 's/^[[:space:]]*max_batch_size:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$config" | head -n 1)
max_batch=${max_batch:-16}
(( max_batch >= 1 )) || die "max_batch_size in $config must be at least 1"
# TensorRT picks kernels for the opt shape: a mid-size batch, what the dynamic batcher forms under load.
opt_batch=$(( max_batch > 1 ? max_batch / 2 : 1 ))

shapes() {  # shapes BATCH -> name:BATCHxdims,... for every input
  local batch=$1 spec out=()
  for spec in "${INPUTS[@]}"; do out+=("${spec%%:*}:${batch}x${spec#*:}"); done
  local IFS=,
  echo "${out[*]}"
}

trtexec=$(command -v trtexec || echo /opt/tensorrt/bin/trtexec)
[[ -x $trtexec ]] || die "trtexec not found (expected in the nvcr.io/nvidia/tensorrt image)"

echo "build_engine: $onnx -> $plan (FP16, batch 1..$max_batch, tuned for $opt_batch)"
# Written to a temporary name and moved into place, so that a failed or interrupted build never
# leaves a partial plan that is newer than the ONNX and would be skipped next time.
tmp_plan=$plan.partial
rm -f "$tmp_plan"
"$trtexec" \
  --onnx="$onnx" \
  --saveEngine="$tmp_plan" \
  --fp16 \
  --minShapes="$(shapes 1)" \
  --optShapes="$(shapes "$opt_batch")" \
  --maxShapes="$(shapes "$max_batch")" \
  --skipInference \
  || { rm -f "$tmp_plan"; die "trtexec failed (its log is above)"; }
[[ -s $tmp_plan ]] || die "trtexec exited 0 but wrote no engine"
mv "$tmp_plan" "$plan"
echo "build_engine: wrote $plan"
