"""Real servers for end-to-end tests: `python -m service` under uvicorn on 127.0.0.1. The one
with the tiny model, `server`, is tests/conftest.py's."""

import time
from collections.abc import Iterator

import pytest

from mcdropout_client import Client
from tests.servers import serve


@pytest.fixture(scope="session")
def empty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Live but never ready: its model folder holds no checkpoint."""
    with serve(tmp_path_factory.mktemp("no-models")) as url, Client(url) as client:
        while client.ready().reason == "loading models":  # then it says why it is not ready
            time.sleep(0.05)
        yield url
