"""MCDROPOUT_DEVICE: the CPU by default; CUDA end to end where torch sees a GPU (never in CI)."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from service.settings import Settings
from tests.helpers import make_client, wait_ready

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_serves_the_same_answers_as_the_cpu(model_dir: Path) -> None:
    answers = {}
    for device in ("cpu", "cuda"):
        with make_client(Settings(model_path=model_dir, device=device)) as client:
            wait_ready(client)
            body = {"instances": PIXELS, "samples": 200, "seed": 1}
            answers[device] = (
                client.post("/v1/models/tiny/predict", json={"instances": PIXELS}).json(),
                client.post("/v1/models/tiny/uncertainty", json=body).json(),
            )
    (cpu_eval, cpu_mc), (gpu_eval, gpu_mc) = answers["cpu"], answers["cuda"]
    for a, b in zip(cpu_eval["predictions"], gpu_eval["predictions"], strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    # Another random stream on the GPU: the same distribution, not the same draws.
    for a, b in zip(cpu_mc["predictions"], gpu_mc["predictions"], strict=True):
        assert sum(b["votes"]) == 200
        assert a["mean_probabilities"] == pytest.approx(b["mean_probabilities"], abs=0.1)
