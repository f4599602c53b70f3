"""MCDROPOUT_DEVICE: the CPU by default; CUDA end to end where torch sees a GPU (never in CI)."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.checkpoint import save_checkpoint
from models.mlp import build_model
from service.settings import Settings
from tests.helpers import TINY, make_client, wait_ready
from training.data import LABELS

PIXELS = torch.rand(3, 784, generator=torch.Generator().manual_seed(0)).tolist()


def test_the_default_device_is_the_cpu(model_dir: Path) -> None:
    assert Settings(model_path=model_dir).device == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "mps", ""])
def test_an_unknown_device_is_refused(device: str) -> None:
    with pytest.raises(ValidationError, match="device"):
        Settings(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match=r"torch sees 0 CUDA device\(s\) here"):
        Settings(device="cuda")


SAMPLES = 10_000
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights x3: answers far from uniform, which dropout moves (the
    untrained tiny model answers about 0.1 for every class, masks or not)."""
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():
        for linear in model.layers():
            linear.weight.mul_(3)
    folder = tmp_path_factory.mktemp("sharp")
    save_checkpoint(folder / "tiny.safetensors", model, LABELS, {"created_at": "2026-01-01"})
    return folder


def answers(folder: Path, device: str, seed: int) -> tuple[list[Any], list[Any]]:
    """The predictions of /predict and of /uncertainty (SAMPLES passes, `seed`) on `device`."""
    settings = Settings(model_path=folder, device=device, max_samples=SAMPLES)
    with make_client(settings) as client:
        wait_ready(client)
        body = {"instances": PIXELS, "samples": SAMPLES, "seed": seed}
        mc = [client.post("/v1/models/tiny/uncertainty", json=body).json() for _ in range(2)]
        assert mc[0] == mc[1]  # a seed reproduces the answer
        predict = client.post("/v1/models/tiny/predict", json={"instances": PIXELS}).json()
    return predict["predictions"], mc[0]["predictions"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_the_device_serves_the_answers_of_the_cpu(sharp_dir: Path, device: str) -> None:
    # The device draws another random stream (seed 2 here, and CUDA's generator there): the
    # same distribution as the CPU's seed 1, not the same draws. On the CPU this checks the check.
    cpu_eval, cpu_mc = answers(sharp_dir, "cpu", seed=1)
    eval_, mc = answers(sharp_dir, device, seed=2)
    for a, b in zip(cpu_eval, eval_, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    for a, b, e in zip(cpu_mc, mc, cpu_eval, strict=True):
        assert sum(b["votes"]) == SAMPLES
        mean_a, mean_b = np.array(a["mean_probabilities"]), np.array(b["mean_probabilities"])
        std_a, std_b = np.array(a["std_probabilities"]), np.array(b["std_probabilities"])
        # Two independent means of SAMPLES passes: within 5 standard errors of their difference.
        tolerance = 5 * np.sqrt((std_a**2 + std_b**2) / SAMPLES) + 1e-9
        assert (np.abs(mean_a - mean_b) <= tolerance).all()
        # Dropout moves this model's answers far past that: one without it would fail.
        assert (np.abs(mean_a - np.array(e["probabilities"])) > 3 * tolerance).any()
