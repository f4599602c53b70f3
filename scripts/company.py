"""Does an answer depend on its company? One checkpoint, K test images: each image's eval and
seeded MC answer alone against the same image inside one request of all K (the engine the
service runs, engine_for). Prints how many of the K differ, and by how much. Run it in two trees
to compare them (docs/reliability.md#the-same-answer-in-any-company):

.venv/bin/python scripts/company.py checkpoints/fashion-mlp.safetensors [--images 40]
"""

import argparse
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.engine import MCRequest, engine_for
from training.data import load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = engine_for(load_checkpoint(args.checkpoint))
    X = load_splits(None)[3].X[: args.images]  # the test split
    together = engine.predict(X)
    alone = torch.cat([engine.predict(x[None]) for x in X])
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
