#!/usr/bin/env bash
# Installs a Docker engine for the kind e2e tier (Debian's docker.io, and mmdebstrap to make base
# images from Debian's packages), and starts dockerd if none answers.
#
# No image registry is reachable on the machines this runs on, so nothing is ever pulled: every
# image is built here (scripts/install-kind.sh). A dockerd started here is left running for the
# tests (they need it) and its pid is written to $DOCKERD_PIDFILE so the e2e tier's cleanup stops
# exactly the daemon it started, never one that was already running.
# Exits non-zero when no engine can be had; make's deps step then skips the e2e tier, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/run/vmlease-e2e-dockerd.pid}
say() { echo "install-docker: $*"; }

apt_ensure docker.io mmdebstrap
if docker info >/dev/null 2>&1; then
    say "a Docker engine answers: $(docker info --format '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}')"
    exit 0
fi
command -v dockerd >/dev/null || { say "no dockerd after installing docker.io"; exit 1; }
LOG=/var/log/vmlease-e2e-dockerd.log
say "no Docker engine answers: starting dockerd (log $LOG, pid in $DOCKERD_PIDFILE)"
setsid dockerd >"$LOG" 2>&1 </dev/null &
echo $! >"$DOCKERD_PIDFILE"
# dockerd answers within 2 s here (overlay2, no registry to reach); 60 polls 0.5 s apart (30 s)
# leave room for a slow first start (it creates /var/lib/docker) without hiding a daemon that died.
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null || { say "dockerd exited:"; tail -20 "$LOG" >&2; exit 1; }
    sleep 0.5
done
docker info >/dev/null 2>&1 || { say "dockerd did not answer within 30 s:"; tail -20 "$LOG" >&2; exit 1; }
say "dockerd started: $(docker info --format '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}')"
