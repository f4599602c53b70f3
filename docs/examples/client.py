"""Every endpoint through httpx. Run from the repository root while `make run` serves."""

import json
from pathlib import Path

import httpx

with httpx.Client(base_url="http://127.0.0.1:8000", timeout=30) as client:
    print(client.get("/health/live").json())
    print(client.get("/health/ready").json())
    print([m["name"] for m in client.get("/v1/models").json()["models"]])
    card = client.get("/v1/models/fashion-cnn").json()
    print(card["architecture"], card["metrics"]["test_accuracy"], card["samples"])

    boot = json.loads(Path("docs/examples/request.json").read_text())
    pred = client.post("/v1/models/fashion-cnn/predict", json=boot).json()["predictions"][0]
    print(pred["label"], round(pred["confidence"], 4))

    body = json.loads(Path("docs/examples/uncertainty.json").read_text())  # N=100, seed 0
    answer = client.post("/v1/models/fashion-cnn/uncertainty", json=body).json()
    for p in answer["predictions"]:
        print(p["label"], p["agreement"], p["votes"], round(p["mutual_information"], 4))

    bad = client.post("/v1/models/fashion-cnn/predict", json={"instances": [[0.5] * 783]})
    print(bad.status_code, bad.json()["detail"][0]["msg"])
