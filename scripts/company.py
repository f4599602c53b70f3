"""Does an answer depend on its company? One checkpoint, the web page's 60 Fashion-MNIST test
images (service/page/static/examples.json, so no data set is needed): each image's eval and
seeded MC answer alone against the same image inside one request of all of them, through the
engine the service runs (engine_for, on --device: a GPU engine fuses). Prints how many differ,
and by how much. Run it in two trees to compare them
(docs/reliability.md#the-same-answer-in-any-company):

.venv/bin/python scripts/company.py checkpoints/fashion-cnn.safetensors [--device cuda]
"""

import argparse
import base64
import json
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.engine import MCRequest, engine_for

EXAMPLES = Path(__file__).parents[1] / "service/page/static/examples.json"


def examples() -> torch.Tensor:
    """[60, 784] float32 in [0, 1]: the page's test images."""
    raw = base64.b64decode(json.loads(EXAMPLES.read_text())["pixels_base64"])
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(-1, 784) / 255.0).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = engine_for(load_checkpoint(args.checkpoint), device=args.device)
    X = examples()
    together = engine.predict(X)
    alone = torch.cat([engine.predict(x[None]) for x in X])
    together, alone = together.cpu(), alone.cpu()
    gaps = (together - alone).abs().amax(1)
    print(f"eval: {int((gaps > 0).sum())} of {len(X)} differ, by up to {float(gaps.max()):.3g}")
    (mc,) = engine.uncertainty([MCRequest(X, args.samples, args.seed)])
    lone = [engine.uncertainty([MCRequest(x[None], args.samples, args.seed)])[0] for x in X]
    means = torch.cat([s.mean_probabilities for s in lone])
    votes = torch.cat([s.votes for s in lone])
    gaps = (mc.mean_probabilities - means).abs().amax(1)
    print(
        f"MC (N = {args.samples}, seed {args.seed}): {int((gaps > 0).sum())} of {len(X)} differ "
        f"(mean probabilities by up to {float(gaps.max()):.3g}), "
        f"{int((mc.votes != votes).any(1).sum())} in their votes"
    )


if __name__ == "__main__":
    main()
