"""Real servers for end-to-end tests: `python -m service` under uvicorn on 127.0.0.1."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcdropout_client import Client
from tests.servers import LIMITS, serve
from tests.service.conftest import tiny_model_folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_folder(tmp_path_factory, "client-models")


@pytest.fixture(scope="session")
def server(tiny_dir: Path) -> Iterator[str]:
    with serve(tiny_dir, LIMITS) as url, Client(url) as client:
        client.wait_ready(timeout=60)
        yield url


@pytest.fixture(scope="session")
def empty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Live but never ready: its model folder holds no checkpoint."""
    with serve(tmp_path_factory.mktemp("no-models")) as url, Client(url) as client:
        while client.ready().reason == "loading models":  # then it says why it is not ready
            time.sleep(0.05)
        yield url
