# `make serve` installs what serving needs into .venv; `make test` adds the dev, train and ray extras.
# Both install from the locks in requirements/ (exact versions, with hashes; docs/install.md), and
# later runs skip the installs that are already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
TORCH_VERSION := 2.13.0
# Where torch comes from. Empty: pip's default (here, a CPU build on local disk). Elsewhere,
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` avoids the large CUDA build.
TORCH_INDEX ?=
# The locks' inputs: the Python they cover from (3.11, as the images), what torch itself needs, and
# torch left out (requirements/not-locked.txt says why).
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock' \
	--excludes requirements/not-locked.txt pyproject.toml requirements/torch-needs.in

.PHONY: install install-serve lock test lint typecheck unit serve sample bench reliability gpu-check gpu-check-dry clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the locks: seconds where pip takes a minute (docs/install.md has the figures). It comes
# from its own lock, with pip.
$(UV): requirements/uv.txt | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/uv.txt
	touch $@

# A lock, then torch by its pin, then the project itself without dependencies. torch comes with pip,
# which reads this machine's pip configuration (it offers the CPU build on local disk; a bare
# `torch` would pull a multi-GB CUDA build), without compiling its files to bytecode first (half of
# pip's time for it; Python compiles what it imports, as for everything uv installs). The stamp
# names the torch pin, so a new pin installs again.
define install_from_lock
	$(UV) pip install --quiet --python $(BIN)/python --require-hashes -r $(1)
	$(BIN)/pip install --quiet --no-compile torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@
endef

$(VENV)/.serve-torch-$(TORCH_VERSION): requirements/serve.txt pyproject.toml | $(UV)
	$(call install_from_lock,requirements/serve.txt)

$(VENV)/.dev-torch-$(TORCH_VERSION): requirements/dev.txt pyproject.toml | $(UV)
	$(call install_from_lock,requirements/dev.txt)

install-serve: $(VENV)/.serve-torch-$(TORCH_VERSION)

install: $(VENV)/.dev-torch-$(TORCH_VERSION)

# After editing pyproject.toml's dependencies: the locks again, keeping every version that still
# fits; `make lock LOCK_UPGRADE=--upgrade` takes the newest releases instead. Needs only the registry.
LOCK_UPGRADE ?=
lock: | $(UV)
	$(UV) pip compile --quiet $(LOCK_UPGRADE) $(LOCK_FLAGS) --extra train --extra dev --extra ray -o requirements/dev.txt
	$(UV) pip compile --quiet $(LOCK_FLAGS) --constraints requirements/dev.txt -o requirements/serve.txt
	$(UV) pip compile --quiet $(LOCK_UPGRADE) --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make lock' requirements/uv.in -o requirements/uv.txt

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

serve: install-serve
	$(BIN)/charlm serve

sample: install-serve
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
