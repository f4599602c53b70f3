import asyncio
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException

from models.checkpoint import load_checkpoint, save_checkpoint
from models.engine import Engine
from service.api.v1 import JSONRequest
from service.settings import Settings
from tests.helpers import (
    TINY_CNN,
    images,
    make_client,
    tiny_cnn,
    wait_ready,
    write_tiny_checkpoint,
    write_tiny_cnn_checkpoint,
)
from training.data import LABELS

PREDICT = "/v1/models/tiny/predict"
UNCERTAINTY = "/v1/models/tiny/uncertainty"


def assert_422(response: Any, loc: list[Any], fragment: str) -> None:
    assert response.status_code == 422, response.text
    (error,) = [e for e in response.json()["detail"] if e["loc"] == loc]
    assert fragment in error["msg"], error["msg"]


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_model_card(client: TestClient, model_dir: Path) -> None:
    file = model_dir / "tiny.safetensors"
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    card = client.get("/v1/models/tiny").json()
    assert card["name"] == "tiny"
    assert card["sha256"] == sha
    assert card["version"] == sha[:12]
    assert card["architecture"] == {
        "kind": "mlp",
        "layer_sizes": [784, 32, 16, 10],
        "dropout": [0.5, 0.5],
        "variant": "scratch",
        "conv_channels": [],
        "convs_per_block": None,
    }
    assert card["labels"] == list(LABELS)
    assert card["input"]["shape"] == [784]
    assert card["input"]["also_accepts"] == [28, 28]
    assert card["samples"] == {"default": 20, "maximum": 500}
    assert card["metrics"] == {"test_accuracy": 0.5}
    assert card["calibration"] is None
    assert client.get("/v1/models").json() == {"models": [card]}


def test_cnn_model_card(tmp_path: Path) -> None:
    write_tiny_cnn_checkpoint(tmp_path / "cnn.safetensors")
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        card = c.get("/v1/models/cnn").json()
    assert card["architecture"] == {
        "kind": "cnn",
        "layer_sizes": [8 * 7 * 7, 16, 10],
        "dropout": [0.5],
        "variant": None,
        "conv_channels": [4, 8],
        "convs_per_block": 1,
    }
    assert card["input"]["shape"] == [784]


def test_cnn_is_served_over_v1(tmp_path: Path) -> None:
    write_tiny_cnn_checkpoint(tmp_path / "cnn.safetensors")
    x = images(3)
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        predict = c.post("/v1/models/cnn/predict", json={"instances": x})
        assert predict.status_code == 200, predict.text
        body = {"instances": x, "samples": 50, "seed": 7}
        answers = [c.post("/v1/models/cnn/uncertainty", json=body) for _ in range(2)]
    probs = torch.tensor([p["probabilities"] for p in predict.json()["predictions"]])
    with torch.no_grad():
        expected = torch.softmax(tiny_cnn()(torch.tensor(x)), dim=-1)  # eval mode
    torch.testing.assert_close(probs, expected)
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json() == answers[1].json()  # the seed fixes the answer
    predictions = answers[0].json()["predictions"]
    assert [sum(p["votes"]) for p in predictions] == [50] * 3
    # Dropout in the dense head: the passes scatter.
    assert any(max(p["std_probabilities"]) > 0 for p in predictions)


def test_unknown_model_is_404(client: TestClient) -> None:
    for r in (
        client.get("/v1/models/nope"),
        client.post("/v1/models/nope/predict", json={"instances": images(1)}),
        client.post("/v1/models/nope/uncertainty", json={"instances": images(1)}),
    ):
        assert r.status_code == 404
        assert r.json() == {"detail": "model 'nope' not found; available: tiny"}


def test_predict_matches_engine(client: TestClient, model_dir: Path) -> None:
    x = images(3)
    body = client.post(PREDICT, json={"instances": x}).json()
    expected = Engine(load_checkpoint(model_dir / "tiny.safetensors").model).predict(
        torch.tensor(x)
    )
    assert body["model"] == "tiny"
    assert len(body["version"]) == 12
    assert len(body["predictions"]) == 3
    for pred, probs in zip(body["predictions"], expected, strict=True):
        assert pred["probabilities"] == pytest.approx(probs.tolist(), abs=1e-6)
        assert pred["class_index"] == int(probs.argmax())
        assert pred["label"] == LABELS[pred["class_index"]]
        assert pred["confidence"] == pytest.approx(float(probs.max()), abs=1e-6)
        assert sum(pred["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_accepts_28_rows_of_28(client: TestClient) -> None:
    flat = images(2)
    rows = [np.asarray(x).reshape(28, 28).tolist() for x in flat]
    a = client.post(PREDICT, json={"instances": flat}).json()
    b = client.post(PREDICT, json={"instances": rows}).json()
    assert a == b


def test_uncertainty_statistics(client: TestClient) -> None:
    r = client.post(UNCERTAINTY, json={"instances": images(2), "samples": 64, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["samples"], body["seed"], body["model"]) == (64, 3, "tiny")
    for pred in body["predictions"]:
        assert sum(pred["votes"]) == 64
        assert pred["agreement"] == pred["votes"][pred["class_index"]] / 64
        mean = pred["mean_probabilities"]
        assert pred["class_index"] == int(np.argmax(mean))
        assert pred["label"] == LABELS[pred["class_index"]]
        assert sum(mean) == pytest.approx(1.0, abs=1e-6)  # float32 softmax
        assert len(pred["std_probabilities"]) == 10
        assert all(s >= 0 for s in pred["std_probabilities"])
        entropy = -sum(p * math.log(p) for p in mean if p > 0)
        assert pred["predictive_entropy"] == pytest.approx(entropy, abs=1e-9)
        assert pred["mutual_information"] == pytest.approx(
            pred["predictive_entropy"] - pred["expected_entropy"], abs=1e-9
        )
        low, high = pred["agreement_interval"]
        assert low <= pred["agreement"] <= high
        assert pred["abstain"] is None  # the tiny model has no calibrated threshold


def test_uncertainty_seed_and_defaults(client: TestClient) -> None:
    x = images(2)
    first = client.post(UNCERTAINTY, json={"instances": x, "samples": 50, "seed": 11}).json()
    again = client.post(UNCERTAINTY, json={"instances": x, "samples": 50, "seed": 11}).json()
    other = client.post(UNCERTAINTY, json={"instances": x, "samples": 50, "seed": 12}).json()
    assert first == again
    assert first["predictions"] != other["predictions"]
    default = client.post(UNCERTAINTY, json={"instances": x}).json()
    assert default["samples"] == 20
    assert default["seed"] is None
    assert all(sum(p["votes"]) == 20 for p in default["predictions"])


@pytest.mark.parametrize(
    ("instance", "fragment"),
    [
        ([0.5] * 783, "expected 784 numbers or 28 rows of 28, got shape [783]"),
        ([[0.5] * 28] * 27, "expected 784 numbers or 28 rows of 28, got shape [27, 28]"),
        ([[0.5] * 28] * 27 + [[0.5] * 27], "rows of different lengths"),
        ([0.5] * 783 + [1.5], "value at position 783 is 1.5, outside [0, 1]"),
        ([-0.25] + [0.5] * 783, "value at position 0 is -0.25, outside [0, 1]"),
        ([0.5] * 783 + ["a"], "values must be numbers"),
        ([0.5] * 783 + [None], "values must be numbers"),
        ([0.5] * 783 + [True], "values must be numbers, not true/false"),
        ([[0.5] * 28] * 27 + [[0.5] * 27 + [False]], "values must be numbers, not true/false"),
        ("pixels", "expected a list of 784 numbers"),
        (0.5, "expected a list of 784 numbers"),
    ],
)
def test_bad_instance_is_422_naming_index(client: TestClient, instance: Any, fragment: str) -> None:
    r = client.post(PREDICT, json={"instances": [*images(1), instance]})
    assert_422(r, ["body", "instances", 1], f"instance 1: {fragment}")


def test_a_boolean_pixel_is_422_on_the_uncertainty_route_too(client: TestClient) -> None:
    # The routes scan the pixels for booleans only when the JSON text holds true or false.
    r = client.post(UNCERTAINTY, json={"instances": [[0.5] * 783 + [False]], "samples": 5})
    assert_422(r, ["body", "instances", 0], "instance 0: values must be numbers, not true/false")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_is_422(client: TestClient, token: str) -> None:
    content = '{"instances": [[' + ", ".join(["0.5"] * 10 + [token] + ["0.5"] * 773) + "]]}"
    r = client.post(PREDICT, content=content, headers={"content-type": "application/json"})
    assert_422(r, ["body", "instances", 0], "value at position 10 is NaN or infinite")


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        ({"instances": []}, ["body", "instances"], "at least 1 item"),
        ({}, ["body", "instances"], "Field required"),
        ({"instances": images(1), "sample": 5}, ["body", "sample"], "Extra inputs"),
        ({"instances": images(1), "samples": 0}, ["body", "samples"], "greater than or equal to 1"),
        (
            {"instances": images(1), "samples": 501},
            ["body", "samples"],
            "exceeds the maximum of 500",
        ),
        ({"instances": images(1), "samples": 2.5}, ["body", "samples"], "valid integer"),
        ({"instances": images(1), "seed": -1}, ["body", "seed"], "greater than or equal to 0"),
        ({"instances": images(1), "seed": 2**53}, ["body", "seed"], "less than or equal to"),
        # JSON integers only, as V2 takes them.
        ({"instances": images(1), "seed": True}, ["body", "seed"], "valid integer"),
        ({"instances": images(1), "samples": False}, ["body", "samples"], "valid integer"),
        ({"instances": images(1), "samples": "100"}, ["body", "samples"], "valid integer"),
        ({"instances": images(1), "samples": 100.0}, ["body", "samples"], "valid integer"),
        ({"instances": images(1), "seed": "7"}, ["body", "seed"], "valid integer"),
    ],
)
def test_bad_parameters_are_422(
    client: TestClient, body: dict[str, Any], loc: list[Any], fragment: str
) -> None:
    assert_422(client.post(UNCERTAINTY, json=body), loc, fragment)


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post(
        PREDICT, content=b'{"instances": [[0.1', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_limits(client: TestClient) -> None:
    # The instance limit is in the OpenAPI schema (maxItems): breaking it is invalid input.
    r = client.post(PREDICT, json={"instances": images(9)})
    assert_422(r, ["body", "instances"], "instances: 9 exceeds the limit of 8 per request")
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["PredictRequest"]["properties"]["instances"]["maxItems"] == 8
    samples = schema["UncertaintyRequest"]["properties"]["samples"]["anyOf"][0]
    assert (samples["minimum"], samples["maximum"]) == (1, 500)
    # A product of two fields has no JSON-schema form: over it, the request is too large.
    r = client.post(UNCERTAINTY, json={"instances": images(3), "samples": 400})
    assert r.status_code == 413
    assert r.json()["detail"] == ("instances x samples = 3 x 400 = 1200 exceeds the limit of 1000")


def test_body_limit_is_413_with_or_without_content_length(client: TestClient) -> None:
    big = json.dumps({"instances": [[0.123456789] * 784] * 30}).encode()
    assert len(big) > 200_000
    expected = {"detail": "request body exceeds the limit of 200000 bytes"}
    r = client.post(PREDICT, content=big, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (413, expected)

    def chunks() -> Iterator[bytes]:  # streamed: no Content-Length to trust
        for i in range(0, len(big), 10_000):
            yield big[i : i + 10_000]

    r = client.post(PREDICT, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert (r.status_code, r.json()) == (413, expected)


def test_not_ready_is_503(tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with make_client(Settings(model_path=tmp_path)) as c:
        for _ in range(1000):
            r = c.get("/health/ready")
            if r.json()["reason"] != "loading models":
                break
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json() == {
            "status": "not ready",
            "reason": "no valid checkpoint could be loaded (see server log)",
        }
        for r in (c.get("/v1/models"), c.post(PREDICT, json={"instances": images(1)})):
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert str(tmp_path) not in r.text
        assert c.get("/health/live").status_code == 200


def test_bad_checkpoint_is_refused_and_good_ones_served(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "good.safetensors")
    data = bytearray(write_tiny_checkpoint(tmp_path / "tampered.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "tampered.safetensors").write_bytes(bytes(data))
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["good"]
        assert c.get("/v1/models/tampered").status_code == 404


def test_a_model_of_other_inputs_is_refused_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Until the routes follow a checkpoint's input spec, they take 784 gray pixels: a colour
    # 32x32 CNN would be fed the wrong shape, so it is refused, and the others are served.
    write_tiny_checkpoint(tmp_path / "good.safetensors")
    colour = replace(TINY_CNN, in_channels=3, height=32, width=32)
    save_checkpoint(tmp_path / "colour.safetensors", tiny_cnn(config=colour), LABELS, {})
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["good"]
        assert c.get("/v1/models/colour").status_code == 404
    assert "colour.safetensors: takes 3072 inputs; this service serves models of 784" in caplog.text


def test_single_checkpoint_file(model_dir: Path) -> None:
    with make_client(Settings(model_path=model_dir / "tiny.safetensors")) as c:
        wait_ready(c)
        assert c.post(PREDICT, json={"instances": images(1)}).status_code == 200


def test_unexpected_error_is_generic_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("secret detail in /srv/models/tiny.safetensors")

    monkeypatch.setattr(Engine, "predict", boom)
    r = client.post(PREDICT, json={"instances": images(1)})
    assert (r.status_code, r.json()) == (500, {"detail": "internal server error"})


def test_no_dropout_model_refuses_mc(tmp_path: Path) -> None:
    from models.checkpoint import save_checkpoint
    from models.mlp import MLPConfig, build_model

    save_checkpoint(
        tmp_path / "plain.safetensors",
        build_model(MLPConfig(hidden=(8,), dropout=(0.0,))),
        LABELS,
        {},
    )
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        r = c.post("/v1/models/plain/uncertainty", json={"instances": images(1)})
        assert r.status_code == 422
        assert r.json() == {"detail": "model 'plain' has no dropout: MC dropout is undefined"}
        assert c.post("/v1/models/plain/predict", json={"instances": images(1)}).status_code == 200


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    v2_model = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    assert set(paths) == {
        "/admin/reload",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/models/{model}/predict",
        "/v1/models/{model}/uncertainty",
        "/v1/models/{model}/uncertainty/image",
        "/v1/models/{model}/preprocess/image",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        *v2_model,
        *(f"{m}/ready" for m in v2_model),
        *(f"{m}/infer" for m in v2_model),
    }
    responses = paths["/v1/models/{model}/uncertainty"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "422", "503", "504"} <= set(responses)


CALIBRATION = {
    "samples": 100,
    "seed": 0,
    "temperature_eval": 2.0,
    "temperature_mc": 0.5,
    "nll_val_eval": [0.5, 0.4],
    "nll_val_mc": [0.5, 0.4],
    "target_selective_accuracy": 0.99,
    "abstain_below_agreement": 0.9,
    "target_reached": True,
    "coverage_val": 0.6,
    "selective_accuracy_val": 0.99,
    "coverage_test": 0.58,
    "selective_accuracy_test": 0.985,
}


def test_calibrated_model_applies_temperatures_and_abstains(tmp_path: Path) -> None:
    from models.checkpoint import save_checkpoint
    from models.mlp import build_model
    from tests.helpers import TINY

    torch.manual_seed(3)
    model = build_model(TINY)
    save_checkpoint(tmp_path / "cal.safetensors", model, LABELS, {"calibration": CALIBRATION})
    x = images(4)
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        card = c.get("/v1/models/cal").json()
        shown = {k: v for k, v in CALIBRATION.items() if k not in ("seed", "nll_val_eval")}
        shown.pop("nll_val_mc")
        assert card["calibration"] == shown
        response = c.post("/v1/models/cal/predict", json={"instances": x}).json()
        probs = torch.tensor([p["probabilities"] for p in response["predictions"]])
        with torch.no_grad():
            expected = torch.softmax(model.eval()(torch.tensor(x)) / 2.0, dim=-1)
        torch.testing.assert_close(probs, expected)

        body = {"instances": x, "samples": 40, "seed": 1}
        preds = c.post("/v1/models/cal/uncertainty", json=body).json()["predictions"]
        assert {p["abstain"] for p in preds} <= {True, False}
        for p in preds:
            assert p["abstain"] == (p["agreement"] < 0.9)
            # Wilson 95% for k of n, by hand.
            k, n, z = p["votes"][p["class_index"]], 40, 1.959963984540054
            centre = (k / n + z * z / (2 * n)) / (1 + z * z / n)
            half = z * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            assert p["agreement_interval"] == pytest.approx(
                [max(0.0, centre - half), min(1.0, centre + half)], abs=1e-12
            )


@pytest.mark.parametrize(
    "text",
    [
        '{"instances": [[0.1, 1e-3, 2.5E-1, 0.30000000000000004, 1, 0, -0.0, 1.0]]}',
        '{"a": 123456789012345678901234567890, "b": [NaN, Infinity, -Infinity]}',
        '{"s": "\\ud800 lone surrogate", "t": "\\u00e9\\n", "dup": 1, "dup": 2}',
        '{"x": 1e400, "y": 5e-324}',
    ],
)
def test_json_bodies_parse_exactly_as_the_json_module_parses_them(text: str) -> None:
    parsed = parse_json(text.encode())
    expected = json.loads(text)
    assert json.dumps(parsed) == json.dumps(expected)  # NaN-safe and type-exact comparison
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]


def parse_json(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    request = JSONRequest({"type": "http", "method": "POST", "headers": []}, receive)
    return asyncio.run(request.json())


def test_json_bodies_must_be_utf8() -> None:
    # json.loads reads UTF-16 and UTF-32, where a true is no b"true" for the booleans check.
    text = json.dumps({"instances": [[True] * 784]})
    for encoding in ("utf-16", "utf-32"):  # with their byte order marks
        with pytest.raises(HTTPException, match="the body is not UTF-8 text") as caught:
            parse_json(text.encode(encoding))
        assert caught.value.status_code == 400
    # Without a mark, valid UTF-8 (ASCII and NULs), but not JSON: 422 json_invalid.
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        parse_json(text.encode("utf-16-be"))
    with pytest.raises(json.JSONDecodeError, match="Unexpected UTF-8 BOM"):
        parse_json(text.encode("utf-8-sig"))
