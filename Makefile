# Two commands on a fresh machine: `make serve` and `make test`. Both bootstrap what they need
# (virtual environment, packages, system libraries, the exported reference policy) and skip what is
# already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
STAMPS := .stamps
MODEL_ONNX := model_repository/policy_core/1/model.onnx
EXTRAS := embedded,export,lerobot,client,bench,gr00t,dev
# Installed after the extras, without their declared dependencies: lerobot 0.4.4 (the newest for Python 3.11)
# pins torch<2.11 and heavy extras (its needs are the 'lerobot' extra), and its gRPC stubs need protobuf>=6.31,
# which tritonclient 2.51's metadata caps below 5 although its gRPC client works with it (the whole suite
# runs on it). tritonclient stays at 2.51, the release of our tritonserver and perf_analyzer.
LEROBOT_NODEPS := lerobot==0.4.4 'protobuf>=6.31,<7'
# Debian packages the tests and benchmarks load: perf_analyzer (tritonclient[all] wheel) links libb64.
SYSTEM_PACKAGES := libb64-0d
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: serve test install export lint client bench bench-triton gpu-kit gpu-bench system-deps stale-models clean

serve: $(MODEL_ONNX) stale-models
	$(BIN)/openpi-triton serve

test: $(MODEL_ONNX) $(STAMPS)/system-deps stale-models
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# A model removed from git (such as the *_postprocess models) leaves its directory behind when Python's
# ignored bytecode cache is in it, and tritonserver refuses to start on a model directory without a
# config.pbtxt. Removed here only when nothing but __pycache__ is left in it.
stale-models:
	@for dir in model_repository/*/; do \
		if [ ! -e "$${dir}config.pbtxt" ] && [ -z "$$(find "$$dir" -type f ! -path '*/__pycache__/*' -print -quit)" ]; then \
			echo "removing $$dir: no config.pbtxt, only __pycache__ left (a model removed from the repository)"; \
			rm -rf "$$dir"; \
		fi; \
	done

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --quiet --no-deps $(LEROBOT_NODEPS)
	touch $@

system-deps: $(STAMPS)/system-deps

# apt-get update only when the package lists lack a package (a fresh container has none).
$(STAMPS)/system-deps:
	@if ! dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
		echo "installing $(SYSTEM_PACKAGES) (Debian) ..."; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; }; \
	fi
	mkdir -p $(STAMPS) && touch $@

export: $(MODEL_ONNX)

# Re-exported only when the reference policy's code changes (seeded: the same file every time), not
# when the packages are reinstalled (order-only prerequisite).
$(MODEL_ONNX): openpi_policy/reference_model.py openpi_policy/serving.py openpi_policy/export.py openpi_policy/spec.py | $(INSTALLED)
	$(BIN)/openpi-triton export --output $@

# The side-by-side benchmark (docs/BENCHMARKS.md), in two regimes, each with results, table and plots:
# closed loop (a simulation farm: capacity) and real-time robots at 10 Hz replanning every 5 steps
# (deadline misses). Extra arguments: make bench BENCH_ARGS="--robots 1,4 --duration 10"
bench: $(MODEL_ONNX)
	$(BIN)/python -m benchmarks.side_by_side --rate 0 --deadline-ms 500 --output bench-results/closed-loop $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.side_by_side --rate 10 --replan-steps 5 --output bench-results/realtime $(BENCH_ARGS)

# perf_analyzer against the ensemble over gRPC: make bench-triton BENCH_ARGS="--triton-url host:8001"
bench-triton: $(MODEL_ONNX) $(STAMPS)/system-deps
	$(BIN)/python -m benchmarks.perf_triton $(BENCH_ARGS)

# The GPU host kit (benchmarks/gpu_kit.py): tritonserver and the packages a GPU host without network lacks,
# one archive under 64 MiB to carry beside the checkout. Built here, from the installed wheel and the index.
GPU_KIT := build/gpu-kit.tar.xz
GPU_HOST := .gpu-host
HOST_PYTHON ?= python3

gpu-kit: $(INSTALLED)
	$(BIN)/python -m benchmarks.gpu_kit build --output $(GPU_KIT)

# On the GPU host (Python 3.12 with torch+CUDA; no venv, no network): the fleet on the GPU through Triton,
# side by side with the reference server (benchmarks/gpu_fleet.py), into docs/results/<GPU name>/.
# Extra arguments: make gpu-bench BENCH_ARGS="--duration 10"
gpu-bench:
	$(HOST_PYTHON) -m benchmarks.gpu_kit run --archive $(GPU_KIT) --into $(GPU_HOST) -- $(BENCH_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(STAMPS) $(MODEL_ONNX) bench-results .pytest_cache $(GPU_HOST)
