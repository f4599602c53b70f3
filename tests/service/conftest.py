from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.helpers import make_client, wait_ready


@pytest.fixture
def settings(model_dir: Path) -> Settings:
    # A thread, not an inference process: a process would add its start (about 2 s) to every
    # test. tests/service/test_inference.py, and each test that builds Settings itself, run
    # the default process (tests/conftest.py marks those integration).
    return Settings(
        model_path=model_dir,
        inference="thread",
        max_instances=8,
        default_samples=20,
        max_samples=500,
        max_total_samples=1000,
        max_body_bytes=200_000,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with make_client(settings) as c:
        wait_ready(c)
        yield c
