# vmpower: two commands on a fresh machine — `make run` (demo build) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CORES ?= 2
export PYTHONHASHSEED := 0

.PHONY: help venv debs run demo-data test test-fast bench lint clean

help:
	@echo "make run    build the models from the built-in demo data (creates .venv first)"
	@echo "make test   run the whole test suite (what CI runs)"
	@echo "make bench  run the benchmarks"

# The venv is installed from the hash-pinned lock only (no resolver, no unpinned downloads).
$(VENV)/.installed: envs/dev.lock pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --require-hashes --no-deps -r envs/dev.lock
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

venv: $(VENV)/.installed

# Debian packages the tests need (docker.io, openssh-server, stress-ng, slurm-wlm, ...).
debs:
	bash scripts/ensure-debs.sh $$(grep -v '^#' envs/debian.txt)

demo-data: venv
	$(VPY) -m vmpower synth --config config.yaml --out data/raw

# The worker imports pandas/scikit-learn/ONNX once for all steps (src/vmpower/ops/worker.py).
run: demo-data
	$(VPY) -m vmpower worker run -- $(VENV)/bin/snakemake --cores $(CORES)
	@$(VPY) -m vmpower report-paths --config config.yaml

test: venv debs
	bash scripts/run-tests.sh

test-fast: venv
	$(VPY) -m pytest -m "not slow and not docker and not slurm and not ssh and not stress and not benchmark and not fault" -q

bench: venv
	$(VPY) -m pytest tests/bench -m benchmark --benchmark-only -q

lint: venv
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake

# Stage-specific targets (images, cluster, ...) live in mk/*.mk.
-include mk/*.mk
