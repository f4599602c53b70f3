"""The HTTP service: the edge (edge/), the API by protocol (api/), the batcher and the inference
runners (inference/), the input rules (inputs/), the web page (page/), wired by app.py."""

from importlib.metadata import version

__version__ = version("mcdropout-service")  # pyproject.toml's, the one place it is written
