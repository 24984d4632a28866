#!/usr/bin/env bash
# Builds the CPU image with podman, runs it, waits for its HEALTHCHECK to pass, streams one
# generation from it and stops it, expecting a clean exit. For machines with podman but no Docker
# engine and no reachable image registry: the base is a Debian 12 root filesystem made with
# debootstrap and imported into podman (cached, see CACHE_DIR).
#
# Environment (all optional):
#   CHARLM_SMOKE_CACHE  where the debootstrap tarball is kept (default ~/.cache/charlm-deploy)
#   CHARLM_WHEELS_DIR   a directory of wheels pip may use first, e.g. a CPU torch wheel already on
#                       disk (default: PIP_FIND_LINKS when it is a directory). Without a CPU torch
#                       wheel there, torch comes from PyTorch's CPU index.
#   CHARLM_CA_BUNDLE    extra CA bundle for pip/apt behind a TLS-intercepting proxy (default: the
#                       system bundle), passed as a build secret, never stored in the image
#   CHARLM_SMOKE_PORT   loopback port to publish the container on (default: a free one)
#
# Exit status: 0 passed, 77 skipped (a prerequisite is missing: says which), anything else failed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${CHARLM_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/charlm-deploy}
BASE_TAG=localhost/charlm-base:debian12-minbase
IMAGE_TAG=localhost/charlm:smoke-cpu
CONTAINER=charlm-smoke-$$
PORT=${CHARLM_SMOKE_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
WHEELS_DIR=${CHARLM_WHEELS_DIR:-${PIP_FIND_LINKS:-}}
CA_BUNDLE=${CHARLM_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# crun fails on some cgroup setups; runc works on them all.
RUNTIME=(--runtime runc)
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

log() { echo "smoke: $*" >&2; }

skip() {
    log "SKIPPED: $*"
    exit 77
}

local_cpu_torch() {
    [ -d "$WHEELS_DIR" ] && compgen -G "$WHEELS_DIR/torch-*+cpu-*.whl" >/dev/null
}

check_prerequisites() {
    local tool
    for tool in podman runc debootstrap curl; do
        command -v "$tool" >/dev/null || skip "$tool is not installed"
    done
    podman "${RUNTIME[@]}" info >/dev/null 2>&1 || skip "podman cannot run here: $(podman info 2>&1 | tail -n 1)"
    if ! local_cpu_torch; then
        # The build's pip then needs PyTorch's CPU index (pip's default index has CUDA builds only).
        curl -sfo /dev/null --max-time 20 https://download.pytorch.org/whl/cpu/torch/ \
            || skip "no CPU torch wheel in CHARLM_WHEELS_DIR, and PyTorch's CPU index is unreachable"
    fi
}

ensure_base_image() {
    if podman image exists "$BASE_TAG"; then
        return
    fi
    local tarball=$CACHE_DIR/debian12-minbase.tar
    if [ ! -s "$tarball" ]; then
        log "debootstrap --variant=minbase bookworm (cached afterwards in $tarball)"
        mkdir -p "$CACHE_DIR"
        local rootfs
        rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
        debootstrap --variant=minbase bookworm "$rootfs" >"$CACHE_DIR/debootstrap.log"
        tar -C "$rootfs" -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as $BASE_TAG"
    podman import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_TAG" >/dev/null
}

build_image() {
    # --format docker: HEALTHCHECK exists only in Docker's image format, not in OCI's.
    local args=(--format docker "${RUNTIME[@]}" "${ULIMITS[@]}" --layers
                --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg TORCH_FLAVOUR=cpu
                -f "$REPO/docker/Dockerfile" -t "$IMAGE_TAG")
    if local_cpu_torch; then
        log "torch from $WHEELS_DIR, other packages from pip's default index"
        args+=(--build-context "wheels=$WHEELS_DIR" --build-arg TORCH_INDEX_URL=)
    fi
    if [ -f "$CA_BUNDLE" ]; then
        args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
    fi
    local started=$SECONDS
    podman build "${args[@]}" "$REPO"
    log "image built in $((SECONDS - started)) s"
}

health_status() {
    podman healthcheck run "$CONTAINER" >/dev/null 2>&1 && echo healthy || echo unhealthy
}

wait_healthy() {
    # `podman healthcheck run` runs the image's own HEALTHCHECK command inside the container.
    local deadline=$((SECONDS + 180))
    until [ "$(health_status)" = healthy ]; do
        if [ "$(podman inspect -f '{{.State.Running}}' "$CONTAINER")" != true ] || [ $SECONDS -gt $deadline ]; then
            podman logs "$CONTAINER" >&2 || true
            log "FAILED: the container did not become healthy"
            return 1
        fi
        sleep 2
    done
    log "container healthy"
}

stream_one_generation() {
    local body='{"inputs": "ROMEO:", "parameters": {"max_new_tokens": 40, "seed": 1, "do_sample": true}}'
    local output
    output=$(curl -sSN --max-time 120 -H 'content-type: application/json' -d "$body" \
                  "http://127.0.0.1:$PORT/generate_stream")
    local events
    events=$(grep -c '^data:' <<<"$output" || true)
    if [ "$events" -ne 40 ] || ! grep -q '"finish_reason":"length"' <<<"$output"; then
        echo "$output" >&2
        log "FAILED: expected 40 events ending with finish_reason length, got $events"
        return 1
    fi
    log "streamed 40 events; generated text: $(tail -n 2 <<<"$output" | sed -n 's/.*"generated_text":\("[^"]*"\).*/\1/p')"
}

check_probes() {
    # The orchestrators' probes (deploy/kubernetes): alive and ready once the models serve.
    local probe
    for probe in live ready; do
        if ! curl -sf --max-time 10 "http://127.0.0.1:$PORT/health/$probe" >/dev/null; then
            log "FAILED: /health/$probe did not answer 200"
            return 1
        fi
    done
    log "/health/live and /health/ready answer 200"
}

cleanup() {
    podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
}

main() {
    mkdir -p "$CACHE_DIR"
    check_prerequisites
    ensure_base_image
    build_image
    trap cleanup EXIT
    # stderr kept aside: without systemd, podman complains that it cannot set up a healthcheck
    # timer (this script runs the healthcheck itself).
    # Confined as deploy/kubernetes runs it: read-only root filesystem with a scratch /tmp, the
    # numeric user, no capabilities, no privilege escalation.
    if ! podman run -d --name "$CONTAINER" "${RUNTIME[@]}" "${ULIMITS[@]}" \
            --read-only --tmpfs /tmp -e HOME=/tmp --user 10001:10001 --cap-drop ALL \
            --security-opt no-new-privileges \
            -p "127.0.0.1:$PORT:8000" -e CHARLM_DEVICE=cpu -e CHARLM_SHUTDOWN_GRACE_S=10 "$IMAGE_TAG" \
            >/dev/null 2>"$CACHE_DIR/run.stderr"; then
        cat "$CACHE_DIR/run.stderr" >&2
        log "FAILED: podman run"
        exit 1
    fi
    wait_healthy
    check_probes
    stream_one_generation
    # SIGTERM to PID 1 (charlm itself): it drains and must exit 0.
    podman stop -t 30 "$CONTAINER" >/dev/null 2>&1
    local status
    status=$(podman inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    if [ "$status" -ne 0 ]; then
        podman logs "$CONTAINER" >&2 || true
        log "FAILED: the container exited with status $status after SIGTERM"
        exit 1
    fi
    log "OK: built, healthy (read-only root, non-root, no capabilities), streamed, stopped cleanly"
}

main "$@"
