"""The candidate default recipe: the chapter's network trained longer, with momentum and a cosine
learning-rate schedule, then calibrated on validation (training.calibrate) and saved as a
checkpoint, so that `python -m training report` can measure it against the issue's targets.

The same model comes from `python -m training train --epochs 60 --lr 0.05 --momentum 0.9
--schedule cosine --dropout 0.2,0.5` (TrainConfig.lr_at gives each epoch its rate).
"""

import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import save_checkpoint
from models.networks import Network
from training.calibrate import calibrate
from training.data import LABELS
from training.experiments.common import Budget, Data, EnginePredictor, assess, write_results
from training.train import TrainConfig, evaluate_split, fit


@dataclass(frozen=True)
class Recipe:
    epochs: int = 60
    lr: float = 0.05
    momentum: float = 0.9
    dropout: tuple[float, float] = (0.2, 0.5)
    schedule: str = "cosine"  # to 0 over the run, stepped once an epoch


def train_recipe(recipe: Recipe, data: Data, b: Budget, out: Path) -> tuple[Network, float]:
    cfg = TrainConfig(
        out=out,
        epochs=recipe.epochs,
        lr=recipe.lr,
        momentum=recipe.momentum,
        dropout=recipe.dropout,
        schedule=recipe.schedule,
        seed=b.seed,
        resume=False,
        progress=False,
    )

    started = time.monotonic()
    model, _ = fit(cfg, data.train, data.val, lambda *_: None)
    return model, time.monotonic() - started


def recipe(b: Budget, data: Data) -> Path:
    r = Recipe(epochs=b.epochs)
    out = b.out / "recipe.safetensors" if b.quick else Path("checkpoints/recipe.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    model, seconds = train_recipe(r, data, b, out)
    fitted = calibrate(model, data.val, data.test, samples=b.samples, seed=b.seed)
    test_loss, test_acc = evaluate_split(model, data.test)
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": {"epochs": r.epochs, "test_loss": test_loss, "test_accuracy": test_acc},
        "training": {
            "recipe": "training/experiments/recipe.py",
            "seed": b.seed,
            "epochs": r.epochs,
            "lr": r.lr,
            "momentum": r.momentum,
            "dropout": list(r.dropout),
            "schedule": r.schedule,
            "batch_size": 256,
        },
        "provenance": {
            "dataset": "Fashion-MNIST",
            "train_examples": len(data.train.y),
            "train_seconds": round(seconds, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "calibration": fitted.to_dict(),
    }
    save_checkpoint(out, model, LABELS, meta)
    row = {
        "model": f"{r.epochs} epochs, lr {r.lr} cosine, momentum {r.momentum}, "
        f"dropout {r.dropout[0]}/{r.dropout[1]}",
        "train_seconds": round(seconds, 1),
        "temperature_eval": fitted.temperature_eval,
        "temperature_mc": fitted.temperature_mc,
        "coverage_test": fitted.coverage_test,
        "selective_accuracy_test": fitted.selective_accuracy_test,
    }
    row |= assess(EnginePredictor(model), data, b)
    notes = (
        f"SGD, batch 256, weights and masks seeded with {b.seed}; wrote {out} (calibrated "
        "on the validation split). Run `python -m training report` on it for the full report."
    )
    return write_results(
        b,
        "Candidate default recipe",
        notes,
        [row],
        [
            "model",
            "train_seconds",
            "temperature_eval",
            "temperature_mc",
            "coverage_test",
            "selective_accuracy_test",
        ],
    )
