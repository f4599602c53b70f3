#!/usr/bin/env bash
# Build the service image: scripts/image.sh TARGET TAG [extra build options...]
#   TARGET     mount (no model inside; mount one at /models) or baked (MODEL_DIR copied in)
#   BASE_IMAGE, WHEELS, WHEELHOUSE, MODEL_DIR, TORCH_SPEC: the Dockerfile's build arguments
#   BUILD_FLAGS: more build options, e.g. "--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt"
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/image.sh mount|baked TAG [build options...]}
tag=${2:?usage: scripts/image.sh mount|baked TAG [build options...]}
shift 2
engine=$(scripts/engine.sh)

args=(--target "$target" --tag "$tag"
    --build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}"
    # Always explicit: podman 4.3 does not resolve "FROM wheels-${WHEELS}" from the default.
    --build-arg "WHEELS=${WHEELS:-index}")
for name in WHEELHOUSE MODEL_DIR TORCH_SPEC TORCH_INDEX_URL PIP_INDEX_URL; do
    if [ -n "${!name:-}" ]; then args+=(--build-arg "$name=${!name}"); fi
done
if [ "$engine" = podman ]; then
    # The OCI image format has no HEALTHCHECK; podman keeps it in the docker format.
    args+=(--format docker)
else
    export DOCKER_BUILDKIT=1
fi
# shellcheck disable=SC2086 # BUILD_FLAGS is a list of options
exec "$engine" build "${args[@]}" ${BUILD_FLAGS:-} "$@" .
