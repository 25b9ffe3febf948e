# Two commands on a fresh machine: `make serve` and `make test`. Both bootstrap what they need
# (virtual environment, packages, system libraries, the exported reference policy) and skip what is
# already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
STAMPS := .stamps
MODEL_ONNX := model_repository/policy_core/1/model.onnx
EXTRAS := embedded,export,client,bench,gr00t,dev
# Debian packages the tests and benchmarks load: perf_analyzer (tritonclient[all] wheel) links libb64.
SYSTEM_PACKAGES := libb64-0d
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: serve test install export lint client bench bench-triton system-deps stale-models clean

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

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(STAMPS) $(MODEL_ONNX) bench-results .pytest_cache
