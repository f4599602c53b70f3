"""NVIDIA's tritonclient against `python -m service` on 127.0.0.1: the V2 answers equal v1's."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from mcdropout_client import Client, UncertaintyResult
from service import __version__
from tests.helpers import pixels
from tests.servers import LIMITS, serve

MC_OUTPUTS = (
    "probabilities",
    "class_index",
    "agreement",
    "votes",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "std_probabilities",
)


@pytest.fixture(scope="module")
def urls(model_dir: Path) -> Iterator[tuple[str, str]]:
    """(host:port for tritonclient, http URL for the v1 client)."""
    with serve(model_dir, LIMITS) as url, Client(url) as client:
        client.wait_ready(timeout=60)
        yield url.removeprefix("http://"), url


@pytest.fixture(scope="module")
def v1(urls: tuple[str, str]) -> Iterator[Client]:
    with Client(urls[1]) as client:
        yield client


@pytest.fixture(scope="module")
def v2(urls: tuple[str, str]) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(urls[0], network_timeout=60.0)
    yield client
    client.close()


def pixels_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = "UINT8" if x.dtype == np.uint8 else "FP32"
    tensor = triton.InferInput("images", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_and_metadata(v2: triton.InferenceServerClient, v1: Client) -> None:
    version = v1.model("tiny").version
    assert v2.is_server_live()
    assert v2.is_server_ready()
    assert v2.is_model_ready("tiny")
    assert v2.is_model_ready("tiny", model_version=version)
    assert not v2.is_model_ready("tiny", model_version="0" * 12)
    assert not v2.is_model_ready("nope")
    assert v2.get_server_metadata() == {
        "name": "mcdropout-service",
        "version": __version__,
        "extensions": ["binary_tensor_data"],
    }
    metadata = v2.get_model_metadata("tiny")
    assert metadata == v2.get_model_metadata("tiny", model_version=version)
    assert (metadata["name"], metadata["versions"]) == ("tiny", [version])
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 784]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP64", [-1, 10]),
        ("class_index", "INT64", [-1]),
        ("agreement", "FP64", [-1]),
        ("votes", "INT64", [-1, 10]),
        ("predictive_entropy", "FP64", [-1]),
        ("expected_entropy", "FP64", [-1]),
        ("mutual_information", "FP64", [-1]),
        ("std_probabilities", "FP64", [-1, 10]),
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_eval_mode_equals_v1_predict(
    v2: triton.InferenceServerClient, v1: Client, binary: bool
) -> None:
    x = pixels(4)
    names = ["probabilities", "class_index"]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in names]
    result = v2.infer("tiny", [pixels_input(x, binary)], outputs=outputs)
    expected = v1.predict("tiny", x)
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == ("tiny", expected.version)
    assert [o["name"] for o in response["outputs"]] == names
    assert [("parameters" in o) for o in response["outputs"]] == [binary, binary]
    assert result.as_numpy("probabilities").dtype == np.float64
    assert np.array_equal(result.as_numpy("probabilities"), expected.probabilities)
    assert result.as_numpy("class_index").tolist() == [p.class_index for p in expected.predictions]


def assert_equals_v1(result: triton.InferResult, expected: UncertaintyResult) -> None:
    for name in MC_OUTPUTS:
        v1_name = "mean_probabilities" if name == "probabilities" else name
        v1_values = np.array([getattr(p, v1_name) for p in expected.predictions])
        got = result.as_numpy(name)
        assert got.shape == v1_values.shape, name
        assert np.array_equal(got, v1_values), name  # bit for bit, not approximately


@pytest.mark.parametrize("binary", [True, False])
def test_mc_mode_equals_v1_uncertainty(
    v2: triton.InferenceServerClient, v1: Client, binary: bool
) -> None:
    x = pixels(3, seed=1)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in MC_OUTPUTS]
    parameters = {"mc_samples": 200, "seed": 11}
    result = v2.infer("tiny", [pixels_input(x, binary)], outputs=outputs, parameters=parameters)
    assert result.get_response()["parameters"] == parameters
    expected = v1.uncertainty("tiny", x, samples=200, seed=11)
    assert_equals_v1(result, expected)
    assert result.as_numpy("votes").sum(1).tolist() == [200] * 3
    other = v2.infer("tiny", [pixels_input(x, binary)], parameters={"mc_samples": 200, "seed": 12})
    assert not np.array_equal(other.as_numpy("probabilities"), result.as_numpy("probabilities"))


def test_default_outputs_are_binary_and_uint8_pixels_equal_v1(
    v2: triton.InferenceServerClient, v1: Client
) -> None:
    u8 = np.random.default_rng(5).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    # No outputs named: tritonclient asks for every output as binary data.
    result = v2.infer("tiny", [pixels_input(u8, True)], parameters={"mc_samples": 30, "seed": 0})
    described = result.get_response()["outputs"]
    assert [o["name"] for o in described] == list(MC_OUTPUTS)
    assert all("binary_data_size" in o["parameters"] for o in described)
    expected = v1.uncertainty("tiny", u8.astype(np.float64) / 255, samples=30, seed=0)
    assert_equals_v1(result, expected)
    json_uint8 = v2.infer(
        "tiny", [pixels_input(u8, False)], parameters={"mc_samples": 30, "seed": 0}
    )
    assert_equals_v1(json_uint8, expected)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests(
    v2: triton.InferenceServerClient, v1: Client, compression: str
) -> None:
    x = pixels(2, seed=2).reshape(2, 28, 28)
    result = v2.infer(
        "tiny",
        [pixels_input(x, True)],
        model_version=v1.model("tiny").version,
        request_compression_algorithm=compression,
    )
    assert np.array_equal(result.as_numpy("probabilities"), v1.predict("tiny", x).probabilities)


def test_errors_reach_tritonclient_with_status_and_message(
    v2: triton.InferenceServerClient,
) -> None:
    x = pixels_input(pixels(1), True)
    cases = [
        ("tiny", {"mc_samples": 501}, "400", "parameter 'mc_samples' must be in [1, 500], got 501"),
        ("nope", {}, "404", "model 'nope' not found; available: tiny"),
        (
            "tiny",
            {"seed": 3},
            "400",
            "parameter 'seed' needs 'mc_samples': eval mode is deterministic",
        ),
    ]
    for model, parameters, status, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            v2.infer(model, [x], parameters=parameters)
        assert (caught.value.status(), caught.value.message()) == (status, message)
    too_many = pixels_input(pixels(9), False)
    with pytest.raises(InferenceServerException) as caught:
        v2.infer("tiny", [too_many])
    assert caught.value.status() == "413"
    assert caught.value.message() == "instances: 9 exceeds the limit of 8 per request"
