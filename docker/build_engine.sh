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

die() { echo "build_engine: $*" >&2; exit 1; }

[[ -f $onnx ]] || die "$onnx not found. Export it on the host first: make export"
[[ -f $config ]] || die "$config not found"

# Per-example shape of every policy-core input, name:AxBxC, read from the input block of config.pbtxt
# so that the engine's profile cannot drift from what Triton feeds it (the batch axis is added below).
inputs=$(python3 - "$config" <<'PY'
import re
import sys

text = re.sub(r"#[^\n]*", "", open(sys.argv[1]).read())
start = re.search(r"(?<!\w)input\s*\[", text)
if start is None:
    sys.exit("no input [ ... ] block")
depth, end = 0, start.end() - 1
for end in range(start.end() - 1, len(text)):
    depth += {"[": 1, "]": -1}.get(text[end], 0)
    if depth == 0:
        break
for entry in re.findall(r"\{[^{}]*\}", text[start.end():end]):
    name = re.search(r'name:\s*"([^"]+)"', entry)
    dims = re.search(r"dims:\s*\[([^\]]*)\]", entry)
    if not (name and dims):
        sys.exit(f"cannot read an input's name and dims from: {entry.strip()}")
    print(f"{name.group(1)}:" + "x".join(d.strip() for d in dims.group(1).split(",")))
PY
) || die "could not read the inputs of $config"
mapfile -t INPUTS <<< "$inputs"
[[ -n $inputs ]] || die "$config declares no inputs"

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

# FP16 for the network, but the state's normalisation and the actions' un-normalisation (the ONNX nodes
# under /serve_state/ and /serve_actions/, see openpi_policy/serving.py) in FP32: FP16 would round a
# raw state value before centring it (losing |mean| / std times more than rounding the normalised
# value does) and would leave a joint angle near 3 rad with 2 mrad of resolution. "prefer": where
# TensorRT cannot honour it, it builds anyway.
FP32_LAYERS="/serve_state/*:fp32,/serve_actions/*:fp32"

echo "build_engine: $onnx -> $plan (FP16, batch 1..$max_batch, tuned for $opt_batch)"
# Written to a temporary name and moved into place, so that a failed or interrupted build never
# leaves a partial plan that is newer than the ONNX and would be skipped next time.
tmp_plan=$plan.partial
rm -f "$tmp_plan"
"$trtexec" \
  --onnx="$onnx" \
  --saveEngine="$tmp_plan" \
  --fp16 \
  --precisionConstraints=prefer \
  --layerPrecisions="$FP32_LAYERS" \
  --minShapes="$(shapes 1)" \
  --optShapes="$(shapes "$opt_batch")" \
  --maxShapes="$(shapes "$max_batch")" \
  --skipInference \
  || { rm -f "$tmp_plan"; die "trtexec failed (its log is above)"; }
[[ -s $tmp_plan ]] || die "trtexec exited 0 but wrote no engine"
mv "$tmp_plan" "$plan"
echo "build_engine: wrote $plan"
