# ftscale: `make setup` once (safe to re-run), then `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# On a machine without CUDA, pip must find the CPU build of torch: either in a local wheel folder
# that pip is configured with, or from PyTorch's CPU index: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup test main-job clean-runs

setup:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	else \
		$(BIN)/pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/ftscale models prepare smollm2-135m

test:
	$(BIN)/pytest -q

main-job:
	$(BIN)/ftscale run configs/experiments/formatting-smollm2-cpu.yaml
