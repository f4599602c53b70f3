"""What tests in several folders share: fixed-seed inputs, the tiny checkpoint, an app in the
test's process, a local HTTP server. Real servers of the project are tests/servers.py's."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from fastapi.testclient import TestClient

from models.checkpoint import save_checkpoint
from models.cnn import CNNConfig, DropoutCNN
from models.mlp import MLPConfig
from models.networks import build_model
from service.app import create_app
from service.inference.batcher import Runner
from service.settings import Settings
from training.data import LABELS, Split

TINY = MLPConfig(hidden=(32, 16), dropout=(0.5, 0.5))
TINY_CNN = CNNConfig(channels=(4, 8), hidden=(16,), dropout=(0.5,))  # 1x28x28: 784 pixels


def images(n: int, seed: int = 0) -> list[list[float]]:
    """n images of 784 pixels in [0, 1], as JSON instances, from a fixed seed."""
    values: list[list[float]] = np.random.default_rng(seed).random((n, 784)).tolist()
    return values


def pixels(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """n images of 784 pixels in [0, 1] as an array [n, 784] (float32: a V2 FP32 tensor)."""
    return np.random.default_rng(seed).random((n, 784)).astype(np.float32)


def blobs(n: int, seed: int) -> Split:
    """Ten noisy class prototypes in [0, 1]^784: learnable, but not in one step."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 784, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (n,), generator=g)
    X = (prototypes[y] + 0.3 * torch.randn(n, 784, generator=g)).clamp(0, 1)
    return Split(X, y)


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    meta = {"created_at": "2026-01-01T00:00:00+00:00", "metrics": {"test_accuracy": 0.5}}
    save_checkpoint(path, build_model(TINY), LABELS, meta)
    return path


def tiny_cnn(seed: int = 0, config: CNNConfig = TINY_CNN) -> DropoutCNN:
    """A small CNN in eval mode after a few train-mode forwards: BatchNorm's running statistics
    have moved away from their initial 0 and 1, so that eval outputs depend on them."""
    torch.manual_seed(seed)
    model = build_model(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, config.num_inputs, generator=g))
    return model.eval()


def write_tiny_cnn_checkpoint(path: Path, seed: int = 0) -> Path:
    meta = {"created_at": "2026-01-01T00:00:00+00:00", "metrics": {"test_accuracy": 0.5}}
    save_checkpoint(path, tiny_cnn(seed), LABELS, meta)
    return path


def make_client(settings: Settings, runner: Runner | None = None) -> TestClient:
    """A client of the app of `settings`, its batches computed by `runner` if given."""
    return TestClient(create_app(settings, runner), raise_server_exceptions=False)


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not become ready")
        time.sleep(0.01)


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """`handler` on 127.0.0.1, a free port, in a thread of the test's process."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
