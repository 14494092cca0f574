#!/usr/bin/env bash
# Makes debian:<suite>-slim from Debian's packages (mmdebstrap, then `docker import`), the base of
# every image built here: the vmlease images (Dockerfile), kind's node image and the control-plane
# images. Users pull the official debian:<suite>-slim, which is the same Debian release built the
# same way (minbase, no docs or man pages); the images the tests install are the images users get.
# An image already under that tag (pulled, or made by an earlier run) is kept.
#
#   hack/kind/base.sh SUITE
set -euo pipefail
SUITE=$1
TAG=debian:$SUITE-slim
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base: $TAG present"
    exit 0
fi
WORK=$(mktemp -d /var/tmp/vmlease-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "base: making $TAG with mmdebstrap from deb.debian.org (about 30 s)"
mmdebstrap --quiet --variant=minbase --components=main \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='APT::Install-Recommends "false"' \
    "$SUITE" "$WORK/rootfs.tar" \
    "deb http://deb.debian.org/debian $SUITE main" \
    "deb http://deb.debian.org/debian $SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $SUITE-security main"
docker import --change 'CMD ["bash"]' --change "LABEL io.vmlease.built-by=hack/kind/base.sh" \
    "$WORK/rootfs.tar" "$TAG" >/dev/null
echo "base: $TAG made ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
