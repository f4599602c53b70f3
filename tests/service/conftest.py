import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.checkpoint import save_checkpoint
from models.mlp import MLPConfig, build_model
from service.app import create_app
from service.inference.batcher import Runner
from service.settings import Settings
from training.data import LABELS

TINY = MLPConfig(hidden=(32, 16), dropout=(0.5, 0.5))


def images(n: int, seed: int = 0) -> list[list[float]]:
    """n images of 784 pixels in [0, 1], as JSON instances, from a fixed seed."""
    values: list[list[float]] = np.random.default_rng(seed).random((n, 784)).tolist()
    return values


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    meta = {"created_at": "2026-01-01T00:00:00+00:00", "metrics": {"test_accuracy": 0.5}}
    save_checkpoint(path, build_model(TINY), LABELS, meta)
    return path


def tiny_model_folder(factory: pytest.TempPathFactory, prefix: str) -> Path:
    """A new folder holding one tiny checkpoint, served as the model "tiny"."""
    folder = factory.mktemp(prefix)
    write_tiny_checkpoint(folder / "tiny.safetensors")
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_folder(tmp_path_factory, "models")


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not become ready")
        time.sleep(0.01)


def make_client(settings: Settings, runner: Runner | None = None) -> TestClient:
    return TestClient(create_app(settings, runner), raise_server_exceptions=False)


@pytest.fixture
def settings(model_dir: Path) -> Settings:
    # A thread, not an inference process: a process would add its start (about 2 s) to every
    # test. tests/service/test_inference.py, and each test that builds Settings itself, run
    # the default process.
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
