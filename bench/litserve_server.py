"""LitServe serving the same checkpoint, for bench/http_bench.py to compare against.

Two LitAPIs in one LitServer, on the same paths as `python -m service`, each with LitServe's
dynamic batching on (requests that arrive within --batch-timeout are merged, up to
--max-batch-size): eval predictions in one forward pass, and MC dropout the Baal way, the merged
inputs repeated N times and one forward pass in train mode. Each API runs in its own inference
worker process; fast_queue (ZeroMQ) is on, as LitServe advises above 100 requests per second.
Run: .venv/bin/python bench/litserve_server.py --checkpoint checkpoints/fashion-mlp.safetensors \
        --port 8002
"""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from torch.nn import functional as F

from models.checkpoint import load_checkpoint
from models.networks import Network
from models.stats import summarize


@dataclass(frozen=True)
class Decoded:
    X: torch.Tensor  # [instances, 784]
    samples: int


class CheckpointAPI(ls.LitAPI):  # type: ignore[misc]
    """Loads the checkpoint in the worker process; decode/batch/unbatch shared by both APIs."""

    def __init__(self, checkpoint: Path, api_path: str, max_batch_size: int, timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=timeout, api_path=api_path)
        self.checkpoint = checkpoint

    def setup(self, device: str) -> None:
        loaded = load_checkpoint(self.checkpoint)
        self.model: Network = loaded.model
        self.labels = loaded.labels

    def decode_request(self, request: dict[str, Any]) -> Decoded:
        X = torch.tensor(request["instances"], dtype=torch.float32).reshape(-1, 784)
        return Decoded(X, int(request.get("samples", 100)))

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return inputs  # predict merges them: requests may hold several instances each

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class PredictAPI(CheckpointAPI):
    def setup(self, device: str) -> None:
        super().setup(device)
        self.model.eval()

    def predict(self, batch: list[Decoded]) -> list[dict[str, Any]]:
        X = torch.cat([d.X for d in batch])
        with torch.no_grad():
            probs = F.softmax(self.model(X), dim=-1)
        confidence, index = probs.max(-1)
        rows = [
            {"class_index": i, "label": self.labels[i], "probabilities": p, "confidence": c}
            for i, p, c in zip(index.tolist(), probs.tolist(), confidence.tolist(), strict=True)
        ]
        return split_rows(rows, batch)


class UncertaintyAPI(CheckpointAPI):
    def setup(self, device: str) -> None:
        super().setup(device)
        self.model.train()  # Baal's MC dropout: the whole model in train mode

    def predict(self, batch: list[Decoded]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in batch]
        for samples in {d.samples for d in batch}:
            group = [i for i, d in enumerate(batch) if d.samples == samples]
            rows = self._replicate(torch.cat([batch[i].X for i in group]), samples)
            for i, response in zip(group, split_rows(rows, [batch[i] for i in group]), strict=True):
                out[i] = response
        return out

    def _replicate(self, X: torch.Tensor, samples: int) -> list[dict[str, Any]]:
        with torch.no_grad():
            logits = self.model(X.repeat(samples, 1)).view(samples, X.shape[0], -1)
        stats = summarize(F.softmax(logits, dim=-1))  # [samples, batch, classes] in
        columns = zip(
            stats.class_index.tolist(),
            stats.agreement.tolist(),
            stats.votes.tolist(),
            stats.mean_probabilities.tolist(),
            strict=True,
        )
        return [
            {
                "class_index": i,
                "label": self.labels[i],
                "agreement": a,
                "votes": v,
                "mean_probabilities": m,
            }
            for i, a, v, m in columns
        ]


def split_rows(rows: list[dict[str, Any]], batch: list[Decoded]) -> list[dict[str, Any]]:
    """One response per request: its own instances' rows, in order."""
    out: list[dict[str, Any]] = []
    start = 0
    for d in batch:
        out.append({"predictions": rows[start : start + len(d.X)]})
        start += len(d.X)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--model-name", default="bench")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    prefix = f"/v1/models/{args.model_name}"
    batching = (args.max_batch_size, args.batch_timeout)
    apis = [
        PredictAPI(args.checkpoint, f"{prefix}/predict", *batching),
        UncertaintyAPI(args.checkpoint, f"{prefix}/uncertainty", *batching),
    ]
    server = ls.LitServer(apis, accelerator="cpu", timeout=120, fast_queue=True)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
