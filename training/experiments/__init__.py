"""python -m training experiment NAME: the chapter's exercises, on the real data, seeded."""

import argparse
import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from training.experiments import exercises, recipe
from training.experiments.common import Budget, Data, load_data

log = logging.getLogger(__name__)

Experiment = Callable[[Budget, Data], Path]

# name -> (function, default epochs)
EXPERIMENTS: dict[str, tuple[Experiment, int]] = {
    "dropout-grid": (exercises.dropout_grid, 10),
    "epochs": (exercises.epochs_gap, 50),
    "activation-variance": (exercises.activation_variance, 10),
    "weight-decay": (exercises.weight_decay, 30),
    "dropconnect": (exercises.dropconnect, 30),
    "gaussian-noise": (exercises.gaussian_noise, 30),
    "recipe": (recipe.recipe, recipe.Recipe.epochs),
}
DOCS = Path("docs/experiments")


def run(
    name: str,
    *,
    epochs: int | None = None,
    quick: bool = False,
    seed: int = 0,
    samples: int | None = None,
    out: Path | None = None,
    data_dir: Path | None = None,
    command: str = "",
) -> Path:
    """Quick: 1 epoch on 1,024 training images, 500 test images, N = 5 (a smoke test)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    function, default_epochs = EXPERIMENTS[name]
    budget = Budget(
        name=name,
        out=out or DOCS / name,
        epochs=epochs or (1 if quick else default_epochs),
        seed=seed,
        samples=samples or (5 if quick else 100),
        train_limit=1024 if quick else None,
        test_limit=500 if quick else None,
        quick=quick,
        data_dir=data_dir,
        command=command,
    )
    if budget.epochs < 1 or budget.samples < 1:
        raise ValueError("epochs and samples must be at least 1")
    budget.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    path = function(budget, load_data(budget))
    log.info("%s: %.0f s; wrote %s", name, time.monotonic() - started, path)
    return path


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    x = sub.add_parser("experiment", help="run one of the chapter's exercises as an experiment")
    x.add_argument("name", choices=sorted(EXPERIMENTS))
    x.add_argument("--epochs", type=int, help="epochs per run (default: the experiment's)")
    x.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 1,024 images, N=5")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--samples", type=int, help="MC passes per test image (100)")
    x.add_argument("--out", type=Path, help="folder (default: docs/experiments/NAME)")
    x.add_argument("--data-dir", type=Path)
    x.set_defaults(handler=main)


def main(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    print(run(**options, command=command_line(args)))


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for the results table."""
    words = [".venv/bin/python", "-m", "training", "experiment", args.name]
    for flag, value in (
        ("--epochs", args.epochs),
        ("--samples", args.samples),
        ("--out", args.out),
        ("--data-dir", args.data_dir),
    ):
        if value is not None:
            words += [flag, str(value)]
    words += ["--seed", str(args.seed)] if args.seed != 0 else []
    return shlex.join(words + (["--quick"] if args.quick else []))
