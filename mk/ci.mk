# CI model regeneration (docs/ci.md; .github/workflows/models.yml just runs `make ci-models`).
#   make ci-models       pinned images -> workflow under runtime=docker -> quality gate ->
#                        changelog -> models, metrics and report collected in $(CI_ARTIFACTS)
#   make gate            the quality gate on the current results/ (no build)
#   make accept-models   accept the current results/ as the new baseline (models/baseline.json)
# Variables: CI_RUNTIME (docker), CI_ARTIFACTS (build/ci-artifacts), CI_SNAKEMAKE_ARGS (extra
# snakemake arguments, e.g. --configfile config.yaml overlay.yaml), CI_SKIP_IMAGES=1 (images
# already built), CORES.
.PHONY: ci-models gate accept-models changelog

CI_RUNTIME ?= docker
CI_ARTIFACTS ?= build/ci-artifacts
CI_SNAKEMAKE_ARGS ?=
CI_RESULTS := results
CI_SMK := $(VENV)/bin/snakemake --cores $(CORES) $(CI_SNAKEMAKE_ARGS) --config runtime=$(CI_RUNTIME)
# The pinned images (mk/images.mk; ENGINE=podman with CI_RUNTIME=podman), unless runtime=local.
CI_IMAGES := $(if $(filter local,$(CI_RUNTIME))$(CI_SKIP_IMAGES),,images)

ci-models: demo-data $(CI_IMAGES)
	@set -euo pipefail; \
	echo "== ci-models: workflow (runtime=$(CI_RUNTIME))"; \
	$(CI_SMK); \
	rm -rf $(CI_ARTIFACTS); mkdir -p $(CI_ARTIFACTS); \
	echo "== ci-models: report"; \
	$(CI_SMK) --report $(CI_ARTIFACTS)/report.html; \
	echo "== ci-models: quality gate"; \
	gate=0; $(VPY) -m vmpower gate --config config.yaml --summary $(CI_RESULTS)/summary.csv \
	  --output $(CI_ARTIFACTS)/gate.md || gate=$$?; \
	$(VPY) -m vmpower changelog --config config.yaml --summary $(CI_RESULTS)/summary.csv \
	  --output $(CI_ARTIFACTS)/changelog.md; \
	echo "== ci-models: artifacts -> $(CI_ARTIFACTS)"; \
	mkdir -p $(CI_ARTIFACTS)/models $(CI_ARTIFACTS)/metrics; \
	cp -r $(CI_RESULTS)/models/. $(CI_ARTIFACTS)/models/; \
	cp $(CI_RESULTS)/summary.csv $(CI_RESULTS)/best.json $(CI_RESULTS)/report.md $(CI_ARTIFACTS)/; \
	(cd $(CI_RESULTS)/train && find . -name metrics.json -exec cp --parents {} $(abspath $(CI_ARTIFACTS))/metrics/ \;); \
	cat $(CI_ARTIFACTS)/changelog.md; \
	if [ "$$gate" -ne 0 ]; then echo "ci-models: quality gate FAILED (see $(CI_ARTIFACTS)/gate.md;" \
	  "if the change is intended: make accept-models and commit models/baseline.json)" >&2; exit "$$gate"; fi; \
	echo "ci-models: quality gate passed; artifacts in $(CI_ARTIFACTS)"

gate: $(VENV)/.installed
	$(VPY) -m vmpower gate --config config.yaml --summary $(CI_RESULTS)/summary.csv

changelog: $(VENV)/.installed
	$(VPY) -m vmpower changelog --config config.yaml --summary $(CI_RESULTS)/summary.csv

# Explicit: rewrites the committed baseline from the current build (review and commit it).
accept-models: $(VENV)/.installed
	$(VPY) -m vmpower accept-models --config config.yaml --summary $(CI_RESULTS)/summary.csv
	@git --no-pager diff --stat -- models/baseline.json 2>/dev/null || true
