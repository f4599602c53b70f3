"""KServe V2 through TestClient: metadata, numbers against the engine, and every refusal."""

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.checkpoint import load_checkpoint, save_checkpoint
from models.engine import Engine, MCRequest
from models.mlp import MLPConfig, build_model
from service import __version__
from service.settings import Settings
from tests.helpers import make_client, pixels, wait_ready
from training.data import LABELS

INFER = "/v2/models/tiny/infer"


def tensor(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {
        "name": "images",
        "datatype": datatype,
        "shape": list(x.shape),
        "data": x.reshape(-1).tolist(),
    } | extra


def infer(client: TestClient, body: dict[str, Any], **kw: Any) -> Any:
    # As tritonclient does: no Content-Type header.
    return client.post(INFER, content=json.dumps(body).encode(), **kw)


def outputs(response: Any) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]
    }


def engine(model_dir: Path) -> Engine:
    return Engine(load_checkpoint(model_dir / "tiny.safetensors").model)


def test_server_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "mcdropout-service",
        "version": __version__,
        "extensions": ["binary_tensor_data"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


def test_model_metadata_and_versions(client: TestClient, model_dir: Path) -> None:
    version = hashlib.sha256((model_dir / "tiny.safetensors").read_bytes()).hexdigest()[:12]
    metadata = client.get("/v2/models/tiny").json()
    assert metadata == {
        "name": "tiny",
        "versions": [version],
        "platform": "pytorch_safetensors",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 10]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "agreement", "datatype": "FP64", "shape": [-1]},
            {"name": "votes", "datatype": "INT64", "shape": [-1, 10]},
            {"name": "predictive_entropy", "datatype": "FP64", "shape": [-1]},
            {"name": "expected_entropy", "datatype": "FP64", "shape": [-1]},
            {"name": "mutual_information", "datatype": "FP64", "shape": [-1]},
            {"name": "std_probabilities", "datatype": "FP64", "shape": [-1, 10]},
        ],
    }
    assert client.get(f"/v2/models/tiny/versions/{version}").json() == metadata
    for path in ("/v2/models/tiny/ready", f"/v2/models/tiny/versions/{version}/ready"):
        r = client.get(path)
        assert (r.status_code, r.json()) == (200, {"name": "tiny", "ready": True})
    x = pixels(1)
    r = client.post(f"/v2/models/tiny/versions/{version}/infer", json={"inputs": [tensor(x)]})
    assert (r.status_code, r.json()["model_version"]) == (200, version)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/versions/1",
        "/v2/models/nope/infer",
    ],
)
def test_unknown_model_is_404(client: TestClient, path: str) -> None:
    r = client.post(path, json={}) if path.endswith("infer") else client.get(path)
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found; available: tiny"})


def test_unknown_version_is_404(client: TestClient) -> None:
    version = client.get("/v2/models/tiny").json()["versions"][0]
    for r in (
        client.get("/v2/models/tiny/versions/000000000000"),
        client.get("/v2/models/tiny/versions/000000000000/ready"),
        client.post("/v2/models/tiny/versions/000000000000/infer", json={}),
    ):
        assert r.status_code == 404
        assert r.json() == {
            "error": f"model 'tiny' has no version '000000000000'; available: {version}"
        }


def test_eval_infer_equals_the_engine(client: TestClient, model_dir: Path) -> None:
    x = pixels(3)
    r = infer(client, {"id": "req-1", "inputs": [tensor(x)]})
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["id"], body["model_name"], "parameters" in body) == ("req-1", "tiny", False)
    assert [o["name"] for o in body["outputs"]] == ["probabilities", "class_index"]
    got = outputs(r)
    expected = engine(model_dir).predict(torch.from_numpy(x))
    # FP64 on the wire holds the float32 probabilities exactly.
    assert np.array_equal(got["probabilities"], expected.double().numpy())
    assert np.array_equal(got["class_index"], expected.argmax(-1).numpy())


def test_mc_infer_equals_the_engine(client: TestClient, model_dir: Path) -> None:
    x = pixels(2, seed=4)
    body = {"parameters": {"mc_samples": 40, "seed": 9}, "inputs": [tensor(x)]}
    r = infer(client, body)
    assert r.json()["parameters"] == {"mc_samples": 40, "seed": 9}
    got = outputs(r)
    (stats,) = engine(model_dir).uncertainty([MCRequest(torch.from_numpy(x), 40, 9)])
    assert np.array_equal(got["probabilities"], stats.mean_probabilities.numpy())
    for name in ("class_index", "agreement", "votes", "std_probabilities", "mutual_information"):
        assert np.array_equal(got[name], getattr(stats, name).numpy()), name
    assert np.array_equal(got["predictive_entropy"], stats.predictive_entropy.numpy())
    assert np.array_equal(got["expected_entropy"], stats.expected_entropy.numpy())
    assert got["votes"].sum(1).tolist() == [40, 40]
    assert outputs(infer(client, body)).keys() == got.keys()
    unseeded = infer(client, {"parameters": {"mc_samples": 5}, "inputs": [tensor(x)]})
    assert unseeded.json()["parameters"] == {"mc_samples": 5}


def test_outputs_are_chosen_by_name_in_the_order_asked(client: TestClient) -> None:
    body = {
        "parameters": {"mc_samples": 10, "seed": 1},
        "inputs": [tensor(pixels(2))],
        "outputs": [{"name": "votes"}, {"name": "agreement"}],
    }
    r = infer(client, body)
    described = [(o["name"], o["datatype"], o["shape"]) for o in r.json()["outputs"]]
    assert described == [("votes", "INT64", [2, 10]), ("agreement", "FP64", [2])]
    assert r.json()["outputs"][0]["data"][:10] == outputs(r)["votes"][0].tolist()


def test_forms_of_the_same_pixels_give_the_same_answer(client: TestClient) -> None:
    u8 = np.random.default_rng(2).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    as_float = u8.astype(np.float64) / 255  # what a v1 client sends
    expected = outputs(infer(client, {"inputs": [tensor(as_float.reshape(2, 784))]}))
    nested = tensor(as_float) | {"data": as_float.tolist()}  # [2, 28, 28], natural nesting
    for t in (tensor(as_float), nested, tensor(u8, "UINT8"), tensor(u8.reshape(2, 784), "UINT8")):
        got = outputs(infer(client, {"inputs": [t]}))
        assert np.array_equal(got["probabilities"], expected["probabilities"])
    v1 = client.post(
        "/v1/models/tiny/predict", json={"instances": as_float.reshape(2, 784).tolist()}
    ).json()
    assert expected["probabilities"].tolist() == [p["probabilities"] for p in v1["predictions"]]


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def test_binary_tensors_both_ways(client: TestClient) -> None:
    x = pixels(2, seed=8)
    blob = x.astype("<f4").tobytes()
    header = {
        "parameters": {"mc_samples": 16, "seed": 2},
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": [2, 784],
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}},
            {"name": "votes", "parameters": {"binary_data": True}},
            {"name": "agreement"},
        ],
    }
    content, headers = binary_body(header, blob)
    r = client.post(INFER, content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    probs_meta, votes_meta, agreement_meta = head["outputs"]
    assert probs_meta["parameters"] == {"binary_data_size": 2 * 10 * 8}
    assert "data" not in probs_meta
    assert votes_meta["parameters"] == {"binary_data_size": 2 * 10 * 8}
    probs = np.frombuffer(r.content[n : n + 160], "<f8").reshape(2, 10)
    votes = np.frombuffer(r.content[n + 160 :], "<i8").reshape(2, 10)
    assert len(r.content) == n + 320

    json_answer = outputs(infer(client, {**header, "outputs": None} | {"inputs": [tensor(x)]}))
    assert np.array_equal(probs, json_answer["probabilities"])
    assert np.array_equal(votes, json_answer["votes"])
    assert agreement_meta["data"] == json_answer["agreement"].tolist()


def test_binary_data_output_applies_to_every_output(client: TestClient) -> None:
    u8 = np.random.default_rng(1).integers(0, 256, (1, 784), dtype=np.uint8)
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, 784],
                "parameters": {"binary_data_size": 784},
            }
        ],
        "outputs": [
            {"name": "class_index"},
            {"name": "probabilities", "parameters": {"binary_data": False}},
        ],
    }
    content, headers = binary_body(header, u8.tobytes())
    r = client.post(INFER, content=content, headers=headers)
    n = int(r.headers["inference-header-content-length"])
    index_meta, probs_meta = json.loads(r.content[:n])["outputs"]
    assert index_meta["parameters"] == {"binary_data_size": 8}
    probs = np.asarray(probs_meta["data"])
    assert np.frombuffer(r.content[n:], "<i8").tolist() == [int(probs.argmax())]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies(client: TestClient, encoding: str) -> None:
    body = json.dumps({"inputs": [tensor(pixels(1))]}).encode()
    expected = outputs(client.post(INFER, content=body))
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    r = client.post(INFER, content=packed, headers={"Content-Encoding": encoding})
    assert np.array_equal(outputs(r)["probabilities"], expected["probabilities"])


def error_of(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    message: str = body["error"]
    return message


X1 = pixels(1)
OK_INPUT = tensor(X1)


def with_input(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{**OK_INPUT, **changes}]}


def with_parameters(**parameters: Any) -> dict[str, Any]:
    return {"inputs": [OK_INPUT], "parameters": parameters}


def with_outputs(*requested: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [OK_INPUT], "outputs": list(requested)}


IMG = "input 'images': "
OUTPUT_NAMES = (
    "probabilities, class_index, agreement, votes, predictive_entropy, expected_entropy, "
    "mutual_information, std_probabilities"
)
SHAPES = "shape must be [B, 784] or [B, 28, 28]"
SAMPLES = "parameter 'mc_samples' must be"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body must be a JSON object with 'inputs'"),
        ({}, "inputs: Field required"),
        ({"inputs": []}, "inputs: List should have at least 1 item after validation, not 0"),
        ({"inputs": [OK_INPUT], "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"inputs": [OK_INPUT], "id": 5}, "id: Input should be a valid string"),
        (with_input(shape="784"), "inputs.0.shape: Input should be a valid list"),
        (
            with_input(shape=[1, -784]),
            "inputs.0.shape.1: Input should be greater than or equal to 0",
        ),
        (with_input(name="x"), "the model takes one input 'images', got ['x']"),
        (
            {"inputs": [OK_INPUT] * 2},
            "the model takes one input 'images', got ['images', 'images']",
        ),
        (
            with_input(datatype="FP64"),
            IMG + "datatype must be FP32 (pixels in [0, 1]) or UINT8 (0 to 255), got 'FP64'",
        ),
        (with_input(shape=[1, 783]), IMG + SHAPES + ", got [1, 783]"),
        (with_input(shape=[784]), IMG + SHAPES + ", got [784]"),
        (with_input(shape=[0, 784], data=[]), IMG + "the batch needs at least one instance"),
        (with_input(shape=[2, 784]), IMG + "shape [2, 784] needs 1568 values, got 784"),
        (with_input(data=None), IMG + "'data' must be a list of numbers (or binary data)"),
        (
            with_input(data=[[0.5] * 392, [0.5] * 391]),
            IMG + "nested data has rows of different lengths",
        ),
        (
            with_input(data=[[0.5] * 392] * 2),
            IMG + "data of shape [2, 392] does not match [1, 784]",
        ),
        (with_input(data=["a"] * 784), IMG + "FP32 data must hold numbers only"),
        (with_input(data=[0.5] * 783 + [True]), IMG + "FP32 data must hold numbers only"),
        (with_input(data=[0.5] * 783 + [None]), IMG + "FP32 data must hold numbers only"),
        (
            with_input(datatype="UINT8", data=[2] * 783 + [2.5]),
            IMG + "UINT8 data must hold integers only",
        ),
        (
            with_input(datatype="UINT8", data=[0] * 783 + [300]),
            IMG + "instance 0: value at position 783 is 300, outside [0, 255]",
        ),
        (
            with_input(data=[0.5] * 783 + [1.5]),
            IMG + "instance 0: value at position 783 is 1.5, outside [0, 1]",
        ),
        (
            with_input(data=[-0.25] + [0.5] * 783),
            IMG + "instance 0: value at position 0 is -0.25, outside [0, 1]",
        ),
        (
            with_input(parameters={"shared_memory_region": "r"}),
            IMG + "shared memory is not supported",
        ),
        (
            with_input(parameters={"content": "x"}),
            IMG + "unknown parameter 'content'; known: binary_data_size",
        ),
        (
            with_parameters(samples=5),
            "unknown parameter 'samples'; known: mc_samples, seed, binary_data_output",
        ),
        (with_parameters(mc_samples=0), SAMPLES + " in [1, 500], got 0"),
        (with_parameters(mc_samples=501), SAMPLES + " in [1, 500], got 501"),
        (with_parameters(mc_samples="5"), SAMPLES + " an integer, got '5'"),
        (with_parameters(mc_samples=2.5), SAMPLES + " an integer, got 2.5"),
        (with_parameters(mc_samples=True), SAMPLES + " an integer, got True"),
        (
            with_parameters(mc_samples=5, seed=-1),
            "parameter 'seed' must be in [0, 9007199254740991], got -1",
        ),
        (  # v1's bound: the largest integer every JSON client holds exactly
            with_parameters(mc_samples=5, seed=2**53),
            "parameter 'seed' must be in [0, 9007199254740991], got 9007199254740992",
        ),
        (
            with_parameters(seed=1),
            "parameter 'seed' needs 'mc_samples': eval mode is deterministic",
        ),
        (
            with_parameters(binary_data_output=1),
            "parameter 'binary_data_output' must be true or false, got 1",
        ),
        (
            with_outputs({"name": "logits"}),
            f"unknown output 'logits'; known: {OUTPUT_NAMES}",
        ),
        (
            with_outputs({"name": "votes"}),
            "output 'votes' needs MC mode: set the parameter 'mc_samples'",
        ),
        (
            with_outputs({"name": "class_index"}, {"name": "class_index"}),
            "output 'class_index' is requested twice",
        ),
        (
            with_outputs({"name": "class_index", "parameters": {"classification": 3}}),
            "output 'class_index': parameter 'classification' is not supported",
        ),
        (
            with_outputs({"name": "class_index", "parameters": {"binary_data": "yes"}}),
            "output 'class_index': 'binary_data' must be true or false",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_problem(
    client: TestClient, body: Any, message: str
) -> None:
    assert error_of(infer(client, body)) == message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_values_are_400(client: TestClient, token: str) -> None:
    data = ", ".join(["0.5"] * 784 + [token] + ["0.5"] * 783)
    content = (
        '{"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 784], "data": [%s]}]}'
    )
    message = "input 'images': instance 1: value at position 0 is NaN or infinite"
    assert error_of(client.post(INFER, content=content % data)) == message


def test_bad_binary_framing_is_400(client: TestClient) -> None:
    blob = X1.tobytes()
    meta = {**OK_INPUT, "parameters": {"binary_data_size": len(blob)}}
    del meta["data"]
    content, headers = binary_body({"inputs": [meta]}, blob)
    n = headers["Inference-Header-Content-Length"]
    framing = (
        "Inference-Header-Content-Length must be a byte count of at most the body's "
        f"{len(content)} bytes"
    )
    too_long = len(content) + 1
    cases = [
        (content, {"Inference-Header-Content-Length": "x"}, f"{framing}, got 'x'"),
        (
            content,
            {"Inference-Header-Content-Length": str(too_long)},
            f"{framing}, got '{too_long}'",
        ),
        (
            content[:-4],
            headers,
            "input 'images': the body ends before its 3136 bytes of binary data",
        ),
        (
            content + b"\0" * 8,
            headers,
            "8 bytes of binary data follow the JSON that no input claims",
        ),
        (
            content[: int(n)],
            {},
            "input 'images': the body ends before its 3136 bytes of binary data",
        ),
    ]
    for body, head, message in cases:
        assert error_of(client.post(INFER, content=body, headers=head)) == message
    superscript_two = {"Inference-Header-Content-Length": b"\xb2"}  # a digit to str.isdigit
    assert error_of(client.post(INFER, content=content, headers=superscript_two)).startswith(
        framing
    )
    for size in (100, "3136"):
        wrong = {**meta, "parameters": {"binary_data_size": size}}
        content, headers = binary_body({"inputs": [wrong]}, blob)
        assert error_of(client.post(INFER, content=content, headers=headers)) == (
            f"input 'images': binary_data_size must be 3136 bytes for FP32 [1, 784], got {size!r}"
        )
    both = {**OK_INPUT, "parameters": {"binary_data_size": len(blob)}}
    content, headers = binary_body({"inputs": [both]}, blob)
    assert error_of(client.post(INFER, content=content, headers=headers)) == (
        "input 'images': give 'data' or binary_data_size, not both"
    )
    nan = np.full((1, 784), np.nan, dtype="<f4").tobytes()
    content, headers = binary_body({"inputs": [meta]}, nan)
    assert error_of(client.post(INFER, content=content, headers=headers)) == (
        "input 'images': instance 0: value at position 0 is NaN or infinite"
    )


def test_encodings_and_json_errors_are_named(client: TestClient) -> None:
    assert error_of(client.post(INFER, content=b'{"inputs": [')).startswith(
        "the body is not valid JSON: "
    )
    # JSON must be UTF-8 (RFC 8259): json.loads alone would take UTF-16 and UTF-32.
    for encoding in ("utf-16", "utf-32"):
        text = json.dumps({"inputs": [tensor(np.zeros((1, 784)))]}).encode(encoding)
        assert error_of(client.post(INFER, content=text)).startswith(
            "the body is not UTF-8 text (JSON must be UTF-8): "
        )
    deep = b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert error_of(client.post(INFER, content=deep)) == "the body's JSON is nested too deeply"
    r = client.post(INFER, content=b"{}", headers={"Content-Encoding": "br"})
    assert error_of(r, 415) == "Content-Encoding 'br' is not supported: use gzip or deflate"
    r = client.post(INFER, content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert error_of(r).startswith("the body is not valid gzip data: ")
    r = client.post(INFER, content=gzip.compress(b"{}")[:-12], headers={"Content-Encoding": "gzip"})
    assert error_of(r) == "the body is truncated gzip data"


def test_limits_are_413_before_any_conversion(client: TestClient) -> None:
    # Nine instances of text: the limit answers first, the text is never looked at.
    text = {"name": "images", "datatype": "FP32", "shape": [9, 784], "data": ["x"]}
    assert error_of(infer(client, {"inputs": [text]}), 413) == (
        "instances: 9 exceeds the limit of 8 per request"
    )
    body = {"inputs": [{**text, "shape": [3, 784]}], "parameters": {"mc_samples": 400}}
    assert error_of(infer(client, body), 413) == (
        "instances x mc_samples = 3 x 400 = 1200 exceeds the limit of 1000"
    )
    big = json.dumps({"inputs": [tensor(np.full((30, 784), 0.123456789))]}).encode()
    assert len(big) > 200_000
    message = "request body exceeds the limit of 200000 bytes"
    assert error_of(client.post(INFER, content=big), 413) == message
    bomb = gzip.compress(b" " * 1_000_000)
    assert len(bomb) < 200_000
    r = client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert error_of(r, 413) == message + " once inflated"


def test_not_ready_is_503_with_retry_after(tmp_path: Path) -> None:
    with make_client(Settings(model_path=tmp_path)) as c:
        for _ in range(1000):
            if c.get("/health/ready").json()["reason"] != "loading models":
                break
        for r in (
            c.get("/v2/health/ready"),
            c.get("/v2/models/tiny"),
            c.get("/v2/models/tiny/ready"),
            c.post(INFER, json={"inputs": [OK_INPUT]}),
        ):
            assert r.headers["retry-after"] == "1"
            assert error_of(r, 503) == (
                "not ready: no valid checkpoint could be loaded (see server log)"
            )
            assert str(tmp_path) not in r.text
        assert c.get("/v2/health/live").json() == {"live": True}


def test_no_dropout_model_refuses_mc(tmp_path: Path) -> None:
    plain = build_model(MLPConfig(hidden=(8,), dropout=(0.0,)))
    save_checkpoint(tmp_path / "plain.safetensors", plain, LABELS, {})
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        path = "/v2/models/plain/infer"
        r = c.post(path, json={"inputs": [OK_INPUT], "parameters": {"mc_samples": 3}})
        assert error_of(r) == "model 'plain' has no dropout: MC dropout is undefined"
        assert c.post(path, json={"inputs": [OK_INPUT]}).status_code == 200


def test_unexpected_error_is_a_generic_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("secret detail in /srv/models/tiny.safetensors")

    monkeypatch.setattr(Engine, "predict", boom)
    r = infer(client, {"inputs": [OK_INPUT]})
    assert error_of(r, 500) == "internal server error"
    assert "secret" not in r.text
    assert "secret detail" in caplog.text  # logged with its traceback for the operator


def test_v2_routes_document_their_errors(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{model}/versions/{version}/infer"]["post"]
    assert {"400", "401", "404", "413", "415", "503"} <= set(infer["responses"])
    assert [p["name"] for p in infer["parameters"]] == ["model", "version"]
    error = infer["responses"]["404"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/V2ErrorBody"}


def test_routing_errors_under_v2_use_the_protocols_form(client: TestClient) -> None:
    r = client.delete("/v2/models/tiny/infer")
    assert (r.status_code, r.json()) == (405, {"error": "Method Not Allowed"})
    r = client.get("/v2/nothing/here")
    assert (r.status_code, r.json()) == (404, {"error": "Not Found"})
    assert client.get("/v1/nothing").json() == {"detail": "Not Found"}
