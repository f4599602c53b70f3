#!/usr/bin/env bash
# Where no registry can be reached (CI and the development machines, ../shared/workplace.md),
# build a Debian 12 base with python3 and its venv module locally with mmdebstrap, once: the image
# the Dockerfile then gets as BASE_IMAGE instead of python:3.11-slim.
# Usage: scripts/base-image.sh [TAG]   (default localhost/bookworm-py:local)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/bookworm-py:local}
engine=$(scripts/engine.sh)
if "$engine" image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag exists"
    exit 0
fi
mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates bookworm - \
    | "$engine" import --change 'CMD ["/bin/bash"]' - "$tag"
