#!/usr/bin/env bash
# Build the image and smoke-test it as it runs in production: read-only root filesystem, a tmpfs
# /tmp, no capabilities, no privilege escalation, a non-root user. Both targets: "mount" (the
# model mounted read-only at /models) and "baked" (the model copied into the image). For each:
# wait until the HEALTHCHECK passes, run predict and uncertainty requests, check the user, the
# capabilities and the read-only filesystem, then SIGTERM and a clean exit within GRACE seconds.
#
# Uses podman, or docker where an engine answers (ENGINE=podman|docker to choose). The image's
# build arguments come from the environment (BASE_IMAGE, WHEELS, ...; see scripts/image.sh);
# `make smoke` sets them. Needs the project's venv (make setup) and the data (make data) for the
# dry-run model it serves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
IMAGE=${IMAGE:-mcdropout-service:smoke}
PORT=${PORT:-18000}
GRACE=${GRACE:-10}
READY_TIMEOUT=${READY_TIMEOUT:-90}
EXPECT_UID=${EXPECT_UID:-10001}
engine=$(scripts/engine.sh)
models=build/smoke/models
checkpoint=$models/fashion-cnn.safetensors
name=mcdropout-smoke-$$
hardening=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)
if [ "$engine" = docker ]; then
    # docker's first check waits one interval (10 s in the image); poll faster here.
    hardening+=(--health-interval 1s)
fi
t0=$(date +%s%N)

say() { printf '[smoke %5.1fs] %s\n' "$(( ($(date +%s%N) - t0) / 1000000 ))e-3" "$*"; }
fail() {
    say "FAILED: $*"
    "$engine" logs "$name" 2>&1 | tail -n 30 || true
    exit 1
}
cleanup() { "$engine" rm --force "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

healthy() {
    if [ "$engine" = podman ]; then
        # podman schedules health checks with systemd timers, absent in CI: run the check itself.
        podman healthcheck run "$1" >/dev/null 2>&1
    else
        [ "$(docker inspect --format '{{.State.Health.Status}}' "$1")" = healthy ]
    fi
}

wait_healthy() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until healthy "$1"; do
        [ "$("$engine" inspect --format '{{.State.Running}}' "$1")" = true ] || fail "$1 exited"
        [ "$SECONDS" -lt "$deadline" ] || fail "$1 not healthy after ${READY_TIMEOUT}s"
        sleep 0.5
    done
}

check_confinement() {
    local status
    status=$("$engine" exec "$1" cat /proc/1/status)
    # The server itself (PID 1), not only a process exec'd beside it.
    grep -qP "^Uid:\t$EXPECT_UID\t$EXPECT_UID\t" <<<"$status" \
        || fail "PID 1 does not run as uid $EXPECT_UID: $(grep ^Uid <<<"$status")"
    grep -qP '^CapEff:\t0+$' <<<"$status" || fail "capabilities left: $(grep ^CapEff <<<"$status")"
    grep -qP '^NoNewPrivs:\t1$' <<<"$status" || fail "no-new-privileges is off"
    if "$engine" exec "$1" sh -c ': > /opt/venv/probe' 2>/dev/null; then
        fail "the root filesystem is writable"
    fi
    "$engine" exec "$1" sh -c ': > /tmp/probe && rm /tmp/probe' || fail "/tmp is not writable"
    say "PID 1 runs as uid $EXPECT_UID, no capabilities, no-new-privileges, read-only root"
    say "PID 1 memory after the requests: $(grep -E '^Vm(RSS|HWM)' <<<"$status" | tr -s '\t ' ' ' | paste -sd,)"
    # The inference process (service/inference/process.py) runs beside PID 1, as the same user.
    local python
    python=$("$engine" exec "$1" sh -c 'cat /proc/[0-9]*/status' | awk '
        /^Name:/ { name = $2 } /^Uid:/ { uid = $2 }
        /^VmHWM:/ && name ~ /^python/ { n++; kb += $2; if (uid != '"$EXPECT_UID"') bad++ }
        END { printf "%d %d %d", n, kb, bad }')
    read -r count kb bad <<<"$python"
    [ "$count" -ge 2 ] || fail "no inference process beside PID 1 ($count python processes)"
    [ "$bad" = 0 ] || fail "a python process runs as another user than $EXPECT_UID"
    say "$count python processes, all uid $EXPECT_UID, VmHWM summed: $kb kB"
}

stop_with_sigterm() {
    local start code
    start=$(date +%s%N)
    "$engine" kill --signal TERM "$1" >/dev/null
    code=$(timeout "$GRACE" "$engine" wait "$1") || fail "still running ${GRACE}s after SIGTERM"
    [ "$code" = 0 ] || fail "exit status $code after SIGTERM"
    "$engine" logs "$1" 2>&1 | grep -q "Finished server process" || fail "no graceful shutdown"
    say "SIGTERM: exit 0 after $(( ($(date +%s%N) - start) / 1000000 )) ms (grace ${GRACE}s)"
}

smoke() {  # smoke IMAGE [run options...]
    local image=$1
    shift
    # podman without systemd logs that it cannot schedule health checks; healthy() runs them.
    "$engine" run --detach --name "$name" "${hardening[@]}" \
        --publish "127.0.0.1:$PORT:8000" "$@" "$image" \
        2> >(grep -v 'systemd connection' >&2) >/dev/null
    wait_healthy "$name"
    say "$image: healthy"
    "$PY" scripts/smoke_requests.py "http://127.0.0.1:$PORT" "$checkpoint" || fail "requests"
    check_confinement "$name"
    stop_with_sigterm "$name"
    "$engine" rm "$name" 2> >(grep -v 'systemd connection' >&2) >/dev/null
}

say "engine $engine; training the dry-run model"
rm -rf "$models"
"$PY" -m training train --dry-run --no-progress --no-resume --out "$checkpoint" 2>&1 | tail -n 1

scripts/image.sh mount "$IMAGE" --quiet >/dev/null
say "built $IMAGE: $(( $("$engine" image inspect --format '{{.Size}}' "$IMAGE") / 1000000 )) MB"
MODEL_DIR=$models scripts/image.sh baked "$IMAGE-baked" --quiet >/dev/null
say "built $IMAGE-baked"

smoke "$IMAGE" --volume "$PWD/$models:/models:ro"
smoke "$IMAGE-baked"
say "passed"
