#!/usr/bin/env bash
# Build stand-ins for the two base images from Debian packages, for a machine that reaches an APT
# mirror but no image registry (how the compose set-up was verified: see the README's Containers).
#
#   sudo deploy/docker/local-base.sh [MIRROR]      # default MIRROR: http://deb.debian.org/debian
#
# makes, with debootstrap (Debian bookworm, minbase variant) and `docker import`:
#   stepq-local/python:3.11-bookworm   python3 (Debian's 3.11), python3-venv, ca-certificates
#   stepq-local/redis:7.0-bookworm     redis-server and redis-cli (Debian's 7.0), user `redis`, /data
# then use them in place of the pinned images:
#   docker build --build-arg PYTHON_IMAGE=stepq-local/python:3.11-bookworm -t stepq:local .
#   STEPQ_REDIS_IMAGE=stepq-local/redis:7.0-bookworm docker compose up
# Needs root, debootstrap and a running Docker daemon. Each image takes about a minute.
set -euo pipefail
MIRROR="${1:-http://deb.debian.org/debian}"
SUITE=bookworm
WORK="$(mktemp -d /var/tmp/stepq-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

rootfs() {  # rootfs NAME PACKAGES: a minbase Debian with PACKAGES, in $WORK/NAME
    local dir="$WORK/$1"
    debootstrap --variant=minbase --include="$2" "$SUITE" "$dir" "$MIRROR" >"$WORK/$1.log" 2>&1 \
        || { tail -20 "$WORK/$1.log" >&2; exit 1; }
    # an image needs no package lists, caches or docs
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/var/log/*
}

rootfs python python3,python3-venv,ca-certificates
tar -C "$WORK/python" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - stepq-local/python:3.11-bookworm

rootfs redis redis-server,redis-tools
# Debian's package makes the `redis` user; the official image keeps its data in /data.
chroot "$WORK/redis" sh -c 'mkdir -p /data && chown redis:redis /data'
tar -C "$WORK/redis" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'WORKDIR /data' --change 'VOLUME /data' \
    --change 'USER redis' --change 'EXPOSE 6379' --change 'CMD ["redis-server"]' \
    - stepq-local/redis:7.0-bookworm

docker image ls 'stepq-local/*'
