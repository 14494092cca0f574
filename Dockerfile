# syntax=docker/dockerfile:1
#
# Images of vmlease, one Dockerfile, two targets:
#
#   docker build --target operator -t vmlease-operator:0.1.0 .
#   docker build --target agent    -t vmlease-agent:0.1.0 .
#
# operator  `vmlease-operator` (kopf, cluster-wide), as uid 65532. Liveness GET :8080/healthz
#           (kopf's probe), Prometheus GET :9090/metrics.
# agent     `vmlease-agent --kubernetes` (NODE_NAME from the downward API), as root: it opens the
#           watchdog device, does O_DIRECT I/O on the shared volume, and signals lease holders in
#           the host's pid namespace (the DaemonSet runs privileged with hostPID). Liveness GET
#           :8081/healthz (main loop ticking), readiness GET :8081/readyz (every Lockspace that
#           selects the node joined and live), Prometheus GET :8081/metrics. The image also
#           carries the `vmlease` command line (`vmlease client status`, `vmlease direct ...`).
#
# Kubernetes ignores HEALTHCHECK; the chart's probes use the same endpoints. HEALTHCHECK is there
# for `docker run` and compose.
#
# Python dependencies are pinned with hashes in hack/image/requirements*.txt (generated from
# pyproject.toml by hack/image/lock.sh) and installed with --require-hashes.
#
# The base is Debian bookworm's slim image with Debian's Python 3.11: an image anyone can pull,
# and one that machines with no registry make themselves from the same Debian release
# (hack/kind/base.sh), so the image the e2e tier installs is the image users get. Pin its digest
# (debian:bookworm-slim@sha256:...) in a release pipeline that can resolve it.
#
# Offline builds (the e2e tier: no registry, and PyPI only through this machine's own
# certificates) fill hack/image/wheels with the locked files first (hack/image/wheels.sh) and
# pass --build-arg PIP_NO_INDEX=1; everywhere else that directory is empty and pip uses PyPI.
# --require-hashes checks the bytes either way: the same files, wherever they came from.

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# base: what every stage shares: Debian's python3 and nothing else. The venv lives at one path
# in every stage, so it can be copied from a build stage to a runtime stage as is (its scripts'
# #! lines name that path, and its python links to /usr/bin/python3 of this same base).
FROM ${BASE_IMAGE} AS base
# Debian package versions are not pinned: bookworm's security updates replace them, and an exact
# pin would then fail to build. The Debian release is pinned by the base image instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/vmlease/bin:$PATH

# ---------------------------------------------------------------------------------------------
# venv: the pinned dependencies, then vmlease itself without dependencies (so nothing unpinned
# can slip in through it). The lock is copied before the source: editing code does not redo the
# dependency layer.
FROM base AS venv
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/vmlease
ARG PIP_NO_INDEX
ENV PIP_FIND_LINKS=/tmp/wheels
COPY hack/image/wheels/ /tmp/wheels/
COPY hack/image/requirements.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api api
COPY node-agent node-agent
COPY operator operator
RUN pip install --no-deps . \
    && pip check \
    && vmlease-operator --help >/dev/null \
    && vmlease-agent --help >/dev/null

# ---------------------------------------------------------------------------------------------
# venv-agent: adds libvirt-python, an sdist compiled against Debian's libvirt-dev. The compiler
# and headers exist only in this stage; the agent image gets the runtime library (libvirt0).
FROM venv AS venv-agent
# Debian package versions are not pinned: bookworm's security updates replace them, and an exact
# pin would then fail to build. The Debian release is pinned by the base image instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config python3-dev \
    && rm -rf /var/lib/apt/lists/*
COPY hack/image/requirements-agent.txt /tmp/requirements-agent.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements-agent.txt \
    && python -c "import libvirt"

# ---------------------------------------------------------------------------------------------
FROM base AS operator
COPY --from=venv /opt/vmlease /opt/vmlease
# Non-root, no shell needed at run time; the chart adds readOnlyRootFilesystem and drops every
# capability. A numeric uid lets Kubernetes check runAsNonRoot without /etc/passwd.
USER 65532:65532
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["vmlease-operator"]
CMD ["--log-format=json"]

# ---------------------------------------------------------------------------------------------
# The last stage is the default target: a plain `docker build .` gives the agent.
FROM base AS agent
# libvirt0: the client library libvirt-python links to (talks to the host's libvirtd through
# its socket, mounted from /run/libvirt). Nothing else: no daemon, no compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=venv-agent /opt/vmlease /opt/vmlease
# The chart passes --kubernetes; these defaults make a plain `docker run` serve the health port.
ENV VMLEASE_HEALTH_PORT=8081 \
    VMLEASE_RUN_DIR=/run/vmlease \
    VMLEASE_SHARED_DIR=/var/lib/vmlease/shared
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
# Root on purpose (see the top of this file); the DaemonSet, not the image, grants privileges.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["vmlease-agent"]
