# `make test` and `make sample` install what they need into .venv the first time;
# later runs skip the installs that are already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# Where torch comes from. Empty: pip's default (here, a CPU build on local disk). Elsewhere,
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` avoids the large CUDA build.
TORCH_INDEX ?=

.PHONY: install test lint typecheck unit serve sample bench reliability gpu-check gpu-check-dry clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.torch-$(TORCH_VERSION): | $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch-$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

serve: install
	$(BIN)/charlm serve

sample: install
	$(BIN)/charlm generate --model models/shakespeare-gpt --prompt "ROMEO:" --max-new-tokens 300 --seed 1

bench: install
	$(BIN)/python bench/train_throughput.py

# Soak, disconnect storm, overload and fuzzing with long budgets (about 10 minutes); docs/reliability.md.
reliability: install
	$(BIN)/python bench/reliability.py

# On a machine with a CUDA GPU and its own CUDA torch (no .venv): bench/gpu_check.sh's header says more.
# GPU_CHECK_ARGS="--wheels DIR --data FILE" for machines without the web stack or ../shared.
gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

# The same steps on this machine's CPU at tiny sizes (a few minutes): checks the script, measures nothing.
gpu-check-dry: install
	PYTHON=$(BIN)/python bash bench/gpu_check.sh --dry-run --out /tmp/charlm-gpu-check-dry

# The docs site (docs/, zensical.toml) into site/, strictly: a broken link or anchor fails the build.
# Its generator has a virtualenv of its own, pinned in docs-requirements.txt: a few small wheels, no torch.
DOCS_VENV := .venv-docs
$(DOCS_VENV)/.installed: docs-requirements.txt
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet -r docs-requirements.txt
	touch $@

docs: $(DOCS_VENV)/.installed
	$(DOCS_VENV)/bin/zensical build --strict

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
