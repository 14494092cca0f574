# Two commands matter on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: deps envtest-tools crds test unit lint demo bench clean

deps:
	@bash scripts/install-core.sh
	@bash scripts/install-libvirt.sh || echo "WARNING: libvirt not installed; the libvirt tier will be skipped"
	@bash scripts/install-envtest.sh || echo "WARNING: envtest tools not built; the envtest tier will be skipped"

# Builds kube-apiserver, etcd, kubectl and helm once (minutes), strictly: fails if they do not build.
envtest-tools:
	bash scripts/install-envtest.sh

# Regenerates crds/*.yaml from the pydantic models (tests/unit/test_crds.py fails on drift).
crds:
	$(PY) -m vmlease_operator.api.gen

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check node-agent operator tests bench

test: deps
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest -m "not interop and not libvirt and not envtest and not e2e" $(PYTEST_ARGS)

demo: deps
	$(PY) -m vmlease_agent.demo

bench: deps
	$(PY) bench/run.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache
