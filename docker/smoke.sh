#!/usr/bin/env bash
# Builds charlm's image with podman, runs it, waits for its HEALTHCHECK to pass, streams one
# generation from it, asks it one chat and stops it with SIGTERM, expecting a clean exit:
#
#   docker/smoke.sh [cpu]   the CPU image (TORCH_FLAVOUR=cpu; torch from a local CPU wheel if any)
#   docker/smoke.sh cuda    the default image, PyPI's torch with its CUDA 13.0 libraries, on a
#                           machine without a GPU. Besides the above: inside it torch is built for
#                           CUDA 13.0 and cuDNN, cuBLAS and NCCL load (docker/check_cuda_image.py);
#                           the image is no larger than torch's wheels plus 440 MB; `charlm serve`
#                           (CHARLM_DEVICE=auto) logs that no GPU is visible and serves on the CPU.
#                           The image and its layers (several GB) are removed afterwards.
#
# For machines with podman but no Docker engine and no reachable image registry: the base is a
# Debian 12 root filesystem made with debootstrap and imported into podman (cached, see CACHE_DIR),
# standing in for the Dockerfile's default base, debian:12-slim. Images live in a podman store of
# this project's own (STORE), so that the clean-up after each run (images no longer tagged, and the
# CUDA image) touches nothing else on the machine; one run at a time holds its lock.
#
# Environment (all optional):
#   CHARLM_SMOKE_CACHE  the debootstrap tarball, the podman store and the lock (default ~/.cache/charlm-deploy)
#   CHARLM_WHEELS_DIR   cpu: a directory of wheels pip may use first, e.g. a CPU torch wheel already
#                       on disk (default: PIP_FIND_LINKS when it is a directory). Without a CPU torch
#                       wheel there, torch comes from PyTorch's CPU index.
#   CHARLM_CA_BUNDLE    extra CA bundle for pip/apt behind a TLS-intercepting proxy (default: the
#                       system bundle), passed as a build secret, never stored in the image
#   CHARLM_SMOKE_PORT   loopback port to publish the container on (default: a free one)
#   CHARLM_SMOKE_KEEP   1: keep the CUDA image afterwards, to look inside it (the next run removes it)
#
# Exit status: 0 passed, 77 skipped (a prerequisite is missing: says which), anything else failed.
set -euo pipefail

MODE=${1:-cpu}
case $MODE in cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;; esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${CHARLM_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/charlm-deploy}
STORE=$CACHE_DIR/storage
RUN_ROOT=${XDG_RUNTIME_DIR:-/run}/charlm-deploy
BASE_TAG=localhost/charlm-base:debian12-slim
IMAGE_TAG=localhost/charlm:smoke-$MODE
CONTAINER=charlm-smoke-$MODE-$$
PORT=${CHARLM_SMOKE_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
WHEELS_DIR=${CHARLM_WHEELS_DIR:-${PIP_FIND_LINKS:-}}
CA_BUNDLE=${CHARLM_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# The image beyond what `pip install torch` brings: base, Python, other packages, models (415 MB, of
# which ONNX Runtime with the exporter about 120: the recurrent models' step when it serves on a CPU)
MAX_OVER_WHEELS_MB=440
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

log() { echo "smoke[$MODE]: $*" >&2; }

skip() {
    log "SKIPPED: $*"
    exit 77
}

fail() {
    log "FAILED: $*"
    exit 1
}

# podman on this project's own store; crun fails on some cgroup setups, runc works on them all.
pm() { podman --root "$STORE" --runroot "$RUN_ROOT" --runtime runc "$@"; }

local_cpu_torch() {
    [ "$MODE" = cpu ] && [ -d "$WHEELS_DIR" ] && compgen -G "$WHEELS_DIR/torch-*+cpu-*.whl" >/dev/null
}

check_prerequisites() {
    local tool
    for tool in podman runc debootstrap curl flock; do
        command -v "$tool" >/dev/null || skip "$tool is not installed"
    done
    pm info >/dev/null 2>&1 || skip "podman cannot run here: $(pm info 2>&1 | tail -n 1)"
    if [ "$MODE" = cpu ] && ! local_cpu_torch; then
        # The build's pip then needs PyTorch's CPU index (pip's default index has CUDA builds only).
        curl -sfo /dev/null --max-time 20 https://download.pytorch.org/whl/cpu/torch/ \
            || skip "no CPU torch wheel in CHARLM_WHEELS_DIR, and PyTorch's CPU index is unreachable"
    fi
}

make_slim() {
    # Like debian:12-slim, which this base stands in for: no downloaded packages or package lists,
    # and dpkg told to leave out documentation, manuals and translations, now and in later installs.
    local rootfs=$1
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/groff/*' \
        'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/locale/*' \
        >"$rootfs/etc/dpkg/dpkg.cfg.d/slim"
    find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
        "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/locale/*
}

ensure_base_image() {
    if pm image exists "$BASE_TAG"; then
        return
    fi
    local tarball=$CACHE_DIR/debian12-slim.tar
    rm -f "$CACHE_DIR/debian12-minbase.tar"  # the fuller base of earlier versions of this script
    if [ ! -s "$tarball" ]; then
        log "debootstrap --variant=minbase bookworm, made slim (cached afterwards in $tarball)"
        local rootfs
        rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
        debootstrap --variant=minbase bookworm "$rootfs" >"$CACHE_DIR/debootstrap.log"
        make_slim "$rootfs"
        tar -C "$rootfs" -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as $BASE_TAG"
    pm import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_TAG" >/dev/null
}

build_image() {
    # --format docker: HEALTHCHECK exists only in Docker's image format, not in OCI's.
    local args=(--format docker --runtime runc "${ULIMITS[@]}" --layers --force-rm
                --build-arg "BASE_IMAGE=$BASE_TAG" -f "$REPO/docker/Dockerfile" -t "$IMAGE_TAG")
    if [ "$MODE" = cpu ]; then
        args+=(--build-arg TORCH_FLAVOUR=cpu --build-arg NVIDIA_REQUIRE_CUDA=)
    fi
    if local_cpu_torch; then
        log "torch from $WHEELS_DIR, other packages from pip's default index"
        args+=(--build-context "wheels=$WHEELS_DIR" --build-arg TORCH_INDEX_URL=)
    fi
    if [ -f "$CA_BUNDLE" ]; then
        args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
    fi
    local started=$SECONDS
    pm build "${args[@]}" "$REPO"
    BUILD_SECONDS=$((SECONDS - started))
    log "image built in $BUILD_SECONDS s"
}

check_cuda_inside() {
    local report
    if ! report=$(pm run --rm -i "${ULIMITS[@]}" --entrypoint python "$IMAGE_TAG" - <"$REPO/docker/check_cuda_image.py"); then
        echo "$report" >&2
        fail "the CUDA libraries check failed inside the image (problems above)"
    fi
    log "inside: $report"
    local size_bytes sizes torch_mb cuda_mb venv_mb size_mb
    size_bytes=$(pm image inspect -f '{{.Size}}' "$IMAGE_TAG")
    sizes=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(*(r[k] // 10**6 for k in ("torch_wheels_bytes", "cuda_wheels_bytes", "venv_bytes")))' "$report")
    read -r torch_mb cuda_mb venv_mb <<<"$sizes"
    size_mb=$((size_bytes / 1000000))
    log "image $size_mb MB: torch's wheels $torch_mb MB (its CUDA libraries, triton and torch itself $cuda_mb MB)," \
        "the other packages $((venv_mb - torch_mb)) MB, base, Python and models $((size_mb - venv_mb)) MB; built in $BUILD_SECONDS s"
    if [ $((size_mb - torch_mb)) -gt "$MAX_OVER_WHEELS_MB" ]; then
        fail "the image is $((size_mb - torch_mb)) MB larger than torch's wheels, more than $MAX_OVER_WHEELS_MB MB"
    fi
}

health_status() {
    pm healthcheck run "$CONTAINER" >/dev/null 2>&1 && echo healthy || echo unhealthy
}

wait_healthy() {
    # `podman healthcheck run` runs the image's own HEALTHCHECK command inside the container.
    local deadline=$((SECONDS + 180))
    until [ "$(health_status)" = healthy ]; do
        if [ "$(pm inspect -f '{{.State.Running}}' "$CONTAINER")" != true ] || [ $SECONDS -gt $deadline ]; then
            pm logs "$CONTAINER" >&2 || true
            fail "the container did not become healthy"
        fi
        sleep 2
    done
    log "container healthy"
}

expect_cpu_fallback_reported() {
    # On a machine without a GPU the CUDA image must say so, in its log and in /info.
    local line device
    line=$(pm logs "$CONTAINER" 2>&1 | grep -m 1 "no GPU is visible.*serving on the CPU") \
        || { pm logs "$CONTAINER" >&2; fail "the log does not say that no GPU is visible"; }
    log "logged: $line"
    device=$(curl -sS --max-time 10 "http://127.0.0.1:$PORT/info" \
             | python3 -c 'import json, sys; print(json.load(sys.stdin)["device"])')
    [ "$device" = cpu ] || fail "/info says device $device, expected cpu"
    log "/info: device cpu"
}

stream_one_generation() {
    local body='{"inputs": "ROMEO:", "parameters": {"max_new_tokens": 40, "seed": 1, "do_sample": true}}'
    local output events
    output=$(curl -sSN --max-time 120 -H 'content-type: application/json' -d "$body" \
                  "http://127.0.0.1:$PORT/generate_stream")
    events=$(grep -c '^data:' <<<"$output" || true)
    if [ "$events" -ne 40 ] || ! grep -q '"finish_reason":"length"' <<<"$output"; then
        echo "$output" >&2
        fail "expected 40 events ending with finish_reason length, got $events"
    fi
    log "streamed 40 events; generated text: $(tail -n 2 <<<"$output" | sed -n 's/.*"generated_text":\("[^"]*"\).*/\1/p')"
}

answer_one_chat() {
    # The bundled models ship their chat template: the image answers a chat in character.
    local body='{"messages": [{"role": "user", "content": "Good morrow."}], "max_completion_tokens": 200, "seed": 1}'
    local output
    output=$(curl -sS --max-time 120 -H 'content-type: application/json' -d "$body" \
                  "http://127.0.0.1:$PORT/v1/chat/completions")
    python3 -c 'import json, sys; c = json.load(sys.stdin)["choices"][0]; assert c["message"]["content"], c' \
        <<<"$output" || { echo "$output" >&2; fail "no reply to a chat"; }
    log "answered a chat: $(python3 -c 'import json, sys; print(repr(json.load(sys.stdin)["choices"][0]["message"]["content"][:60]))' <<<"$output")"
}

check_probes() {
    # The orchestrators' probes (deploy/kubernetes): alive and ready once the models serve.
    local probe
    for probe in live ready; do
        curl -sf --max-time 10 "http://127.0.0.1:$PORT/health/$probe" >/dev/null \
            || fail "/health/$probe did not answer 200"
    done
    log "/health/live and /health/ready answer 200"
}

stop_cleanly() {
    # SIGTERM to PID 1 (charlm itself): it drains and must exit 0.
    pm stop -t 30 "$CONTAINER" >/dev/null 2>&1
    local status
    status=$(pm inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    if [ "$status" -ne 0 ]; then
        pm logs "$CONTAINER" >&2 || true
        fail "the container exited with status $status after SIGTERM"
    fi
}

remove_old_images() {
    # Older builds' images lose their tag to the new one; each removal can leave its parent layer
    # untagged and childless in turn, hence the loop. The CPU image stays, a cache for the next
    # build; the CUDA image goes (it is rebuilt only when its inputs change).
    pm rm -f "$CONTAINER" >/dev/null 2>&1 || true
    if [ "$MODE" = cuda ] && [ "${CHARLM_SMOKE_KEEP:-}" != 1 ]; then
        pm rmi -f "$IMAGE_TAG" >/dev/null 2>&1 || true
    fi
    local round
    for round in 1 2 3 4 5 6 7 8; do
        [ -n "$(pm images -q --filter dangling=true)" ] || break
        pm image prune -f >/dev/null 2>&1 || true  # a clean-up that fails must not fail the test
    done
    log "podman store after clean-up: $(du -shx "$STORE" | cut -f1) ($(pm images -q | wc -l) images)"
}

main() {
    mkdir -p "$CACHE_DIR"
    exec 9>"$CACHE_DIR/lock"
    command -v flock >/dev/null || skip "flock is not installed"
    flock -w 1800 9 || fail "another smoke test held $CACHE_DIR/lock for 30 minutes"
    check_prerequisites
    ensure_base_image
    trap remove_old_images EXIT
    build_image
    if [ "$MODE" = cuda ]; then
        check_cuda_inside
    fi
    local env=(-e CHARLM_DEVICE=cpu)
    [ "$MODE" = cpu ] || env=()  # the CUDA image as compose runs it: CHARLM_DEVICE=auto
    # stderr kept aside: without systemd, podman complains that it cannot set up a healthcheck
    # timer (this script runs the healthcheck itself).
    # Confined as deploy/kubernetes runs it: read-only root filesystem with a scratch /tmp, the
    # numeric user, no capabilities, no privilege escalation.
    if ! pm run -d --name "$CONTAINER" "${ULIMITS[@]}" --read-only --tmpfs /tmp -e HOME=/tmp \
            --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges \
            -p "127.0.0.1:$PORT:8000" "${env[@]}" -e CHARLM_SHUTDOWN_GRACE_S=10 "$IMAGE_TAG" \
            >/dev/null 2>"$CACHE_DIR/run.stderr"; then
        cat "$CACHE_DIR/run.stderr" >&2
        fail "podman run"
    fi
    wait_healthy
    check_probes
    if [ "$MODE" = cuda ]; then
        expect_cpu_fallback_reported
    fi
    stream_one_generation
    answer_one_chat
    stop_cleanly
    log "OK: built, healthy (read-only root, non-root, no capabilities), streamed, chatted, stopped cleanly"
}

main "$@"
