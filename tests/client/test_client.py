"""Every method of the sync client against a real server, checked against raw HTTP answers."""

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcdropout_client import (
    Client,
    InvalidInputError,
    NotFoundError,
    TooLargeError,
)
from mcdropout_client.results import Architecture
from tests.helpers import pixels
from training.data import LABELS


def raw(url: str, path: str, body: dict[str, Any]) -> Any:
    return httpx.post(f"{url}{path}", json=body, timeout=30).json()


def assert_mirrors(typed: Any, answer: Any) -> None:
    """Every field of the typed result holds the server's value (a newer server may add more)."""
    if isinstance(typed, dict):
        for key, value in typed.items():
            assert_mirrors(value, answer[key])
    elif isinstance(typed, list):
        assert len(typed) == len(answer)
        for mine, theirs in zip(typed, answer, strict=True):
            assert_mirrors(mine, theirs)
    else:
        assert typed == answer
        assert type(typed) is type(answer)


def test_health_and_model_cards(server: str, model_dir: Path) -> None:
    sha = hashlib.sha256((model_dir / "tiny.safetensors").read_bytes()).hexdigest()
    with Client(server, timeout=10) as client:
        assert client.live().status == "live"
        health = client.ready()
        assert (health.status, health.ready, health.reason) == ("ready", True, None)
        assert client.wait_ready(timeout=1).ready
        (card,) = client.models()
        assert card == client.model("tiny")
        assert (card.name, card.version, card.sha256) == ("tiny", sha[:12], sha)
        assert card.architecture.layer_sizes == [784, 32, 16, 10]
        assert card.architecture.dropout == [0.5, 0.5]
        assert (card.architecture.kind, card.architecture.variant) == ("mlp", "scratch")
        assert (card.architecture.conv_channels, card.architecture.convs_per_block) == ([], None)
        assert card.labels == list(LABELS)
        assert (card.samples.default, card.samples.maximum) == (20, 500)
        assert card.input.shape == [784]
        assert card.metrics == {"test_accuracy": 0.5}
    assert_mirrors(card.model_dump(), httpx.get(f"{server}/v1/models/tiny").json())


def test_architecture_of_a_cnn_and_of_an_older_server() -> None:
    cnn = Architecture.model_validate(
        {
            "kind": "cnn",
            "layer_sizes": [3136, 256, 10],
            "dropout": [0.5],
            "variant": None,
            "conv_channels": [32, 64],
            "convs_per_block": 1,
        }
    )
    assert (cnn.kind, cnn.variant, cnn.conv_channels, cnn.convs_per_block) == (
        "cnn",
        None,
        [32, 64],
        1,
    )
    old = Architecture.model_validate(
        {"layer_sizes": [784, 256, 256, 10], "dropout": [0.2, 0.5], "variant": "scratch"}
    )
    assert (old.kind, old.variant, old.conv_channels, old.convs_per_block) == (
        "mlp",
        "scratch",
        [],
        None,
    )


def test_predict_mirrors_the_v1_answer(server: str) -> None:
    x = pixels(3)
    with Client(server) as client:
        result = client.predict("tiny", x)
    assert_mirrors(
        result.model_dump(), raw(server, "/v1/models/tiny/predict", {"instances": x.tolist()})
    )
    assert (result.model, len(result.predictions)) == ("tiny", 3)
    probs = result.probabilities
    assert probs.shape == (3, 10)
    for p, row in zip(result.predictions, probs, strict=True):
        assert p.class_index == int(row.argmax())
        assert p.label == LABELS[p.class_index]
        assert p.confidence == row.max()


def test_uncertainty_mirrors_the_v1_answer(server: str) -> None:
    x = pixels(2, seed=1)
    with Client(server) as client:
        result = client.uncertainty("tiny", x, samples=64, seed=5)
        again = client.uncertainty("tiny", x, samples=64, seed=5)
        default = client.uncertainty("tiny", x)
    body = {"instances": x.tolist(), "samples": 64, "seed": 5}
    assert_mirrors(result.model_dump(), raw(server, "/v1/models/tiny/uncertainty", body))
    assert result == again
    assert (result.samples, result.seed) == (64, 5)
    for p in result.predictions:
        assert sum(p.votes) == 64
        assert p.agreement == p.votes[p.class_index] / 64
        assert p.mutual_information == pytest.approx(p.predictive_entropy - p.expected_entropy)
    assert result.mean_probabilities.shape == (2, 10)
    assert (default.samples, default.seed) == (20, None)


def test_errors_carry_status_and_message(server: str) -> None:
    with Client(server) as client:
        with pytest.raises(NotFoundError) as not_found:
            client.model("nope")
        assert not_found.value.status == 404
        assert not_found.value.message == "model 'nope' not found; available: tiny"
        assert str(not_found.value) == "404: model 'nope' not found; available: tiny"

        with pytest.raises(InvalidInputError) as invalid:
            client.predict("tiny", [[0.5] * 783])
        assert invalid.value.status == 422
        message = "instance 0: expected 784 numbers or 28 rows of 28, got shape [783]"
        assert invalid.value.message == message
        assert invalid.value.detail[0]["loc"] == ["body", "instances", 0]

        with pytest.raises(InvalidInputError, match="samples: 501 exceeds the maximum of 500"):
            client.uncertainty("tiny", pixels(1), samples=501)

        with pytest.raises(TooLargeError) as too_large:
            client.uncertainty("tiny", pixels(3), samples=400)
        assert too_large.value.status == 413
        assert too_large.value.message == (
            "instances x samples = 3 x 400 = 1200 exceeds the limit of 1000"
        )
        with pytest.raises(NotFoundError):
            client.predict("nope", pixels(1))
