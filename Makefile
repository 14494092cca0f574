# Two commands matter on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# Written by `make deps` when the e2e tier's tools cannot be had here: the reason it is skipped.
E2E_SKIP := .venv/.e2e-skipped

.PHONY: core deps envtest-tools crds test unit lint demo bench e2e clean torture

# What the engine, the agent and the demo need: sanlock for reference, the venv with the project.
core:
	@bash scripts/install-core.sh

# Everything the test tiers need; a tier whose tools fail to install is skipped, loudly.
deps: core
	@bash scripts/install-libvirt.sh || echo "WARNING: libvirt not installed; the libvirt tier will be skipped"
	@bash scripts/install-envtest.sh || echo "WARNING: envtest tools not built; the envtest tier will be skipped"
	@bash hack/image/lint.sh >/dev/null || echo "WARNING: hadolint not installed; the Dockerfile lint check will be skipped"
	@rm -f $(E2E_SKIP); bash scripts/install-kind.sh 2>&1 | tee .venv/.e2e-install.log; \
		if [ $${PIPESTATUS[0]} -ne 0 ]; then tail -1 .venv/.e2e-install.log > $(E2E_SKIP); \
		echo "WARNING: Docker, kind or the node image could not be had; the e2e tier will be skipped"; fi

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

# Every tier but e2e in one pytest run, then the e2e tier on its own kind cluster (tests/e2e/run.sh).
test: deps
	$(LINT)
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)
	@if [ -e $(E2E_SKIP) ]; then echo "SKIPPED: tier e2e: $$(cat $(E2E_SKIP))"; else bash tests/e2e/run.sh $(PYTEST_ARGS); fi

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

# kind end-to-end tier alone: needs a Docker engine (scripts/install-docker.sh installs and starts
# one); builds kind, the node image and vmlease's images, installs the chart, runs tests/e2e.
e2e: core
	bash tests/e2e/run.sh $(PYTEST_ARGS)

clean:
	rm -rf .venv .pytest_cache .ruff_cache
