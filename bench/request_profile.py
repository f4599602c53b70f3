"""Where the server's CPU time for one request goes, stage by stage, in one process (no HTTP).

Run: .venv/bin/python bench/request_profile.py --checkpoint checkpoints/fashion-mlp.safetensors
One test-like image (784 floats rounded to 4 decimals), N = 100; each stage timed alone (best of
5 repeats). For the whole request under load, profile a running server, e.g. with py-spy.
"""

import argparse
import json
import pickle
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydantic_core
import torch

from models.checkpoint import load_checkpoint
from models.engine import MCRequest, engine_for
from service.api.schemas import UncertaintyRequest, UncertaintyResponse
from service.api.v1 import uncertainty_items
from service.inference.jobs import MCAnswer
from service.inference.process import frame
from service.inputs.pixels import to_pixels
from service.registry import ServedModel, model_card
from service.settings import Settings


def best_us(f: Callable[[], object], number: int) -> float:
    f()
    return min(timeit.repeat(f, number=number, repeat=5)) / number * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    engine = engine_for(ckpt)
    served = ServedModel("m", ckpt, engine, model_card("m", ckpt, Settings()))
    image = np.random.default_rng(0).random(784).round(4).tolist()
    body = json.dumps({"instances": [image], "samples": 100, "seed": 1}).encode()
    document = json.loads(body)
    parsed = UncertaintyRequest.model_validate(document)
    X = torch.from_numpy(to_pixels(parsed.instances))
    (stats,) = engine.uncertainty([MCRequest(X, 100, 1)])
    mc = MCAnswer.of(stats)
    batch = frame(("batch", [(0, X.numpy(), 100, 1)]))

    def response() -> UncertaintyResponse:
        items = uncertainty_items(mc, served)
        answer = {"model": "m", "version": "v", "samples": 100, "seed": 1, "predictions": items}
        return UncertaintyResponse.model_validate(answer)

    built = response()
    stages: list[tuple[str, Callable[[], object], int]] = [
        ("parse the body: json.loads", lambda: json.loads(body), 3000),
        ("parse the body: pydantic_core.from_json", lambda: pydantic_core.from_json(body), 3000),
        ("validate the request", lambda: UncertaintyRequest.model_validate(document), 3000),
        ("check and convert the pixels (to_pixels)", lambda: to_pixels(parsed.instances), 3000),
        ("engine: eval prediction", lambda: engine.predict(X), 1000),
        ("engine: MC, N = 100", lambda: engine.uncertainty([MCRequest(X, 100, 1)]), 500),
        ("the MC statistics as lists (MCAnswer.of)", lambda: MCAnswer.of(stats), 2000),
        (
            "inference process: pickle the batch of one MC job",
            lambda: frame(("batch", [(0, X.numpy(), 100, 1)])),
            3000,
        ),
        ("inference process: unpickle it", lambda: pickle.loads(batch[8:]), 3000),
        (
            "inference process: pickle and unpickle the MC answer",
            lambda: pickle.loads(frame(mc)[8:]),
            3000,
        ),
        ("build the MC answer", response, 2000),
        ("serialize the MC answer to JSON", built.model_dump_json, 3000),
    ]
    print(f"torch {torch.__version__}, {args.threads} thread(s); one image, N = 100")
    print("| stage | us |\n|---|---|")
    for name, f, number in stages:
        print(f"| {name} | {best_us(f, number):.1f} |")


if __name__ == "__main__":
    main()
