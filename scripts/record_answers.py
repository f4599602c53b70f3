"""Record what the service answers, to compare two trees bit for bit (a refactor's check).

Serves the checkpoints of MODELS in this process (the inference process, the default settings,
the API key if given) and writes one JSON file: the OpenAPI document, and for a fixed set of
requests (v1, V2 in JSON, the image routes, seeded MC, errors of each kind, and without the key
when one is set) the status, the body and the headers that matter. Run it in each tree and diff:

.venv/bin/python scripts/record_answers.py --models checkpoints /tmp/after.json --api-key k
cd ../before && ../main/.venv/bin/python scripts/record_answers.py --models ... /tmp/before.json
"""

import argparse
import gzip
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

MODEL = "fashion-mlp"
V1 = f"/v1/models/{MODEL}"
V2 = f"/v2/models/{MODEL}"


def tensor(rows: list[list[float]], datatype: str = "FP32") -> dict[str, Any]:
    values = [v for row in rows for v in row]
    return {"name": "images", "shape": [len(rows), 784], "datatype": datatype, "data": values}


def requests(images: list[list[float]]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """name: (method, path, httpx keyword arguments)."""
    one, gray = images[:1], [[0.5] * 784]
    png = io.BytesIO()
    Image.fromarray((np.array(images[0]).reshape(28, 28) * 255).astype(np.uint8)).save(png, "PNG")
    upload = {"file": ("x.png", png.getvalue(), "image/png")}
    gzipped = gzip.compress(json.dumps({"instances": images[:2]}).encode())
    return {
        "card": ("GET", V1, {}),
        "list": ("GET", "/v1/models", {}),
        "predict": ("POST", f"{V1}/predict", {"json": {"instances": images}}),
        "predict_one": ("POST", f"{V1}/predict", {"json": {"instances": one}}),
        "uncertainty": (
            "POST",
            f"{V1}/uncertainty",
            {"json": {"instances": images, "samples": 50, "seed": 3}},
        ),
        "largest_seed": (
            "POST",
            f"{V1}/uncertainty",
            {"json": {"instances": one, "samples": 5, "seed": 2**53 - 1}},
        ),
        "gzip": (
            "POST",
            f"{V1}/predict",
            {
                "content": gzipped,
                "headers": {"content-type": "application/json", "content-encoding": "gzip"},
            },
        ),
        "image": (
            "POST",
            f"{V1}/uncertainty/image",
            {"files": upload, "data": {"samples": "20", "seed": "9"}},
        ),
        "preprocess": ("POST", f"{V1}/preprocess/image", {"files": upload}),
        "v2_server": ("GET", "/v2", {}),
        "v2_ready": ("GET", "/v2/health/ready", {}),
        "v2_metadata": ("GET", V2, {}),
        "v2_eval": ("POST", f"{V2}/infer", {"json": {"inputs": [tensor(images)]}}),
        "v2_mc": (
            "POST",
            f"{V2}/infer",
            {"json": {"inputs": [tensor(images)], "parameters": {"mc_samples": 50, "seed": 3}}},
        ),
        "out_of_range": (
            "POST",
            f"{V1}/predict",
            {"json": {"instances": [[0.5] * 783 + [1.5]]}},
        ),
        "bad_shape": ("POST", f"{V1}/predict", {"json": {"instances": [gray[0], [0.5] * 10]}}),
        "boolean": ("POST", f"{V1}/predict", {"json": {"instances": [[True] + [0.5] * 783]}}),
        "too_many_samples": (
            "POST",
            f"{V1}/uncertainty",
            {"json": {"instances": gray, "samples": 100_000}},
        ),
        "total_over": (
            "POST",
            f"{V1}/uncertainty",
            {"json": {"instances": gray * 200, "samples": 1000, "seed": 1}},
        ),
        "unknown_model": ("POST", "/v1/models/nope/predict", {"json": {"instances": gray}}),
        "v2_out_of_range": (
            "POST",
            f"{V2}/infer",
            {"json": {"inputs": [tensor([gray[0], [0.5] * 700 + [2.0] * 84])]}},
        ),
        "v2_uint8": (
            "POST",
            f"{V2}/infer",
            {"json": {"inputs": [tensor([[256] * 784], "UINT8")]}},
        ),
        "v2_total_over": (
            "POST",
            f"{V2}/infer",
            {"json": {"inputs": [tensor(gray * 200)], "parameters": {"mc_samples": 1000}}},
        ),
        "v2_seed_over": (
            "POST",
            f"{V2}/infer",
            {"json": {"inputs": [tensor(one)], "parameters": {"mc_samples": 5, "seed": 2**53}}},
        ),
        "v2_unknown_model": ("POST", "/v2/models/nope/infer", {"json": {"inputs": []}}),
        "v2_unknown_version": ("POST", f"{V2}/versions/x/infer", {"json": {"inputs": []}}),
        "v2_no_route": ("POST", f"{V2}/nothing", {"json": {}}),
        "v2_wrong_method": ("GET", f"{V2}/infer", {}),
        "v1_no_route": ("POST", f"{V1}/nothing", {"json": {}}),
    }


def answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.content.hex()
    kept = ("retry-after", "www-authenticate", "content-type", "inference-header-content-length")
    headers = {k: v for k, v in response.headers.items() if k.lower() in kept}
    return {"status": response.status_code, "body": body, "headers": headers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--models", type=Path, default=Path("checkpoints"))
    p.add_argument("--api-key")
    args = p.parse_args()
    images = np.random.default_rng(7).random((6, 784)).round(4).tolist()
    key = {} if args.api_key is None else {"X-API-Key": args.api_key}
    record: dict[str, Any] = {}
    settings = Settings(model_path=args.models, api_key=args.api_key)
    with TestClient(create_app(settings)) as client:
        record["openapi"] = client.get("/openapi.json").json()
        for name, (method, path, kwargs) in requests(images).items():
            extra = kwargs.pop("headers", {})
            sent = client.request(method, path, headers={**key, **extra}, **kwargs)
            record[name] = answer(sent)
            if args.api_key is not None:
                unkeyed = client.request(method, path, headers=extra, **kwargs)
                record[f"{name} without the key"] = answer(unkeyed)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"{len(record)} answers in {args.out}")


if __name__ == "__main__":
    main()
