#!/usr/bin/env bash
# Print the container engine to use: $ENGINE if set, else docker where a Docker engine answers,
# else podman (which builds and runs images without a daemon).
set -euo pipefail
if [ -n "${ENGINE:-}" ]; then
    echo "$ENGINE"
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker
elif command -v podman >/dev/null; then
    echo podman
else
    echo "no container engine: install podman, or docker with a running engine" >&2
    exit 1
fi
