"""The tutorial way of serving MC dropout, for bench/http_bench.py to compare against.

A small FastAPI app: pydantic parses the pixels as list[list[float]], torch.tensor converts them,
predict runs the model in eval() under no_grad, uncertainty runs a copy in train() (dropout on)
with a Python loop of N forwards, then softmax, mean and votes -> agreement. No temperatures, no
limits. The same routes and bodies as `python -m service`; one uvicorn worker.
Run: .venv/bin/python bench/naive_server.py --checkpoint checkpoints/fashion-mlp.safetensors \
        --port 8001
"""

import argparse
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel
from torch.nn import functional as F

from models.checkpoint import load_checkpoint


class PredictBody(BaseModel):
    instances: list[list[float]]


class UncertaintyBody(PredictBody):
    samples: int = 100


def create_app(checkpoint: Path) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        loaded = load_checkpoint(checkpoint)
        eval_model = loaded.model.eval()
        # A separate copy stays in train mode, so that concurrent predicts never see dropout on.
        mc_model = copy.deepcopy(eval_model).train()
        yield {"eval_model": eval_model, "mc_model": mc_model, "labels": loaded.labels}

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/{name}/predict")
    def predict(name: str, body: PredictBody, request: Request) -> dict[str, Any]:
        X = torch.tensor(body.instances)
        with torch.no_grad():
            probs = F.softmax(request.state.eval_model(X), dim=-1)
        confidence, index = probs.max(-1)
        labels = request.state.labels
        return {
            "predictions": [
                {"class_index": i, "label": labels[i], "probabilities": p, "confidence": c}
                for i, p, c in zip(index.tolist(), probs.tolist(), confidence.tolist(), strict=True)
            ]
        }

    @app.post("/v1/models/{name}/uncertainty")
    def uncertainty(name: str, body: UncertaintyBody, request: Request) -> dict[str, Any]:
        X = torch.tensor(body.instances)
        model = request.state.mc_model
        with torch.no_grad():
            probs = torch.stack(
                [F.softmax(model(X), dim=-1) for _ in range(body.samples)]
            )  # [samples, batch, classes]
        mean = probs.mean(0)
        class_index = mean.argmax(-1)
        votes = F.one_hot(probs.argmax(-1), mean.shape[-1]).sum(0)  # [batch, classes]
        agreement = votes.gather(1, class_index[:, None]).squeeze(1) / body.samples
        labels = request.state.labels
        return {
            "predictions": [
                {
                    "class_index": i,
                    "label": labels[i],
                    "agreement": a,
                    "votes": v,
                    "mean_probabilities": m,
                }
                for i, a, v, m in zip(
                    class_index.tolist(),
                    agreement.tolist(),
                    votes.tolist(),
                    mean.tolist(),
                    strict=True,
                )
            ]
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = create_app(args.checkpoint)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
