# Two commands matter on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: core deps envtest-tools crds test unit lint demo bench e2e clean torture

# What the engine, the agent and the demo need: sanlock for reference, the venv with the project.
core:
	@bash scripts/install-core.sh

# Everything the test tiers need; a tier whose tools fail to install is skipped, loudly.
deps: core
	@bash scripts/install-libvirt.sh || echo "WARNING: libvirt not installed; the libvirt tier will be skipped"
	@bash scripts/install-envtest.sh || echo "WARNING: envtest tools not built; the envtest tier will be skipped"
	@bash hack/image/lint.sh >/dev/null || echo "WARNING: hadolint not installed; the Dockerfile lint check will be skipped"

# Builds kube-apiserver, etcd, kubectl and helm once (minutes), strictly: fails if they do not build.
envtest-tools:
	bash scripts/install-envtest.sh

# Regenerates crds/*.yaml from the pydantic models (tests/unit/api/test_crds.py fails on drift).
crds:
	$(PY) -m vmlease_api.gen

# Style, types (mypy, product code) and the house's import boundaries (pyproject.toml contracts).
LINT = $(PY) -m ruff check . && $(PY) -m ruff format --check api node-agent operator tests bench \
	&& $(PY) -m mypy && .venv/bin/lint-imports

lint: core
	$(LINT)

test: deps
	$(LINT)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest -m "not interop and not libvirt and not envtest and not e2e" $(PYTEST_ARGS)

demo: core
	$(PY) -m vmlease_agent.sim.demo

bench: core
	$(PY) bench/run.py

# The engine's model-based test with many schedules, bounded in time (replay: VMLEASE_MODEL_SEED=S),
# then the agents' fault campaign until 10,000 acquisitions (about 30 min at 300-400 a minute),
# failing if its 60 min cap comes first (replay: VMLEASE_CAMPAIGN_SEED=S).
torture: core
	VMLEASE_MODEL_SCHEDULES=$${VMLEASE_MODEL_SCHEDULES:-1000000} VMLEASE_MODEL_SECONDS=$${VMLEASE_MODEL_SECONDS:-1800} \
		$(PY) -m pytest tests/model -q -s -p no:cacheprovider $(PYTEST_ARGS)
	VMLEASE_CAMPAIGN_ACQUISITIONS=$${VMLEASE_CAMPAIGN_ACQUISITIONS:-10000} VMLEASE_CAMPAIGN_SECONDS=$${VMLEASE_CAMPAIGN_SECONDS:-3600} \
		$(PY) -m pytest tests/agent/test_campaign.py -q -s -p no:cacheprovider $(PYTEST_ARGS)

# kind end-to-end tier: needs a Docker engine (builds kind, the image, installs the chart).
e2e: deps
	bash tests/e2e/run.sh

clean:
	rm -rf .venv .pytest_cache .ruff_cache
