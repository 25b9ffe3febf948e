# Two commands on a fresh machine: `make serve` and `make test`. Both bootstrap what they need
# (virtual environment, packages, the exported reference policy) and skip what is already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
MODEL_ONNX := model_repository/policy_core/1/model.onnx
EXTRAS := embedded,export,client,bench,dev

.PHONY: serve test install export lint client bench bench-triton clean

serve: $(MODEL_ONNX)
	$(BIN)/openpi-triton serve

test: $(MODEL_ONNX)
	$(BIN)/python -m pytest

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

export: $(MODEL_ONNX)

# Re-exported only when the reference policy's code changes (seeded: the same file every time).
$(MODEL_ONNX): $(INSTALLED) openpi_policy/reference_model.py openpi_policy/export.py openpi_policy/spec.py
	$(BIN)/openpi-triton export --output $@

lint: $(INSTALLED)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(MODEL_ONNX) bench-results .pytest_cache
