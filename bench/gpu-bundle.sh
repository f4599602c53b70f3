#!/usr/bin/env bash
# Builds what bench/gpu.sh carries to a lent GPU machine (.library/device), which has torch and
# Python 3.12 but no registry and no web packages:
# - .whl/: the service's dependencies other than torch and numpy, with everything they need, as
#   wheels for that machine's Python 3.12, at the versions installed in .venv;
# - .gpu/: this machine's wrk and hey, and the libluajit that wrk links.
# Both are git-ignored. Run here, then carry [".whl", ".gpu", "checkpoints"] to bench/gpu.sh.
# Run: bash bench/gpu-bundle.sh   (needs .venv: make setup)
set -euo pipefail
PY=${PY:-.venv/bin/python}
rm -rf .whl .gpu
mkdir -p .whl .gpu

# name==version for each package the project needs on the GPU machine, from .venv's metadata.
pins=$($PY - <<'EOF'
import importlib.metadata as md
import tomllib

from packaging.requirements import Requirement

# The GPU machine's interpreter (KINDS.md: Python 3.12.3 on Linux).
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
SKIP = {"torch", "numpy"}  # the machine's own builds


def needs(requirement: str) -> str | None:
    r = Requirement(requirement)
    if r.marker is not None and not r.marker.evaluate(TARGET):
        return None
    name = r.name.lower().replace("_", "-")
    return None if name in SKIP else name


with open("pyproject.toml", "rb") as f:
    todo = [n for r in tomllib.load(f)["project"]["dependencies"] if (n := needs(r))]
seen: set[str] = set()
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    todo += [n for r in md.requires(name) or [] if (n := needs(r))]
for name in sorted(seen):
    print(f"{name}=={md.version(name)}")
EOF
)
echo "$pins" | tr '\n' ' '
echo
# Binary wheels name the manylinux levels they need, and pip matches each level exactly.
platforms=()
for tag in manylinux_2_{35,34,31,28,27,24,17} manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl $pins 2> >(grep -v "is neither a file nor a directory" >&2)
echo "wheels: $(find .whl -type f -name "*.whl" | wc -l)"

for tool in wrk hey; do
    cp "$(command -v $tool)" .gpu/
done
cp "$(ldd "$(command -v wrk)" | awk '/libluajit/ {print $3}')" .gpu/
du -sh .whl .gpu
