"""The HTTP service: the edge (edge/), the API by protocol (api/), the batcher and the inference
runners (inference/), the input rules (inputs/), the web page (page/), wired by app.py."""

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("mcdropout-service")
except PackageNotFoundError:  # a source tree on PYTHONPATH (bench/gpu.sh), not installed
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    __version__ = tomllib.loads(pyproject.read_text())["project"]["version"]
