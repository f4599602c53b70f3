"""python -m training COMMAND: every command names its handler (set_defaults(handler=...)).

  train [--arch cnn|mlp] [--out PATH] [--data-dir DIR] [--epochs N] [--batch-size N] [--lr LR]
        [--momentum M] [--nesterov] [--weight-decay W] [--hidden 256,256] [--dropout 0.2,0.5]
        [--variant scratch|concise] [--channels 32,64] [--convs-per-block N]
        [--schedule constant|cosine] [--seed S] [--val-size N] [--limit N] [--dry-run]
        [--no-resume] [--no-progress]
        [--calibration-samples N] [--calibration-seed S] [--target-accuracy A]
      Train a dropout network on Fashion-MNIST (the CNN, or the chapter's MLP), then calibrate
      it and write the checkpoint; settings not given are the architecture's recipe
      (training.train.RECIPES). Under torchrun the same training runs data-parallel
      (training/distributed.py).
  calibrate CHECKPOINT [--data-dir DIR]
        [--calibration-samples N] [--calibration-seed S] [--target-accuracy A]
      Fit the temperatures and the abstention threshold again, in the checkpoint.
  evaluate CHECKPOINT [--data-dir DIR] [--samples N] [--seed S] [--json]
      Test accuracy in eval and MC mode, and agreement on right and wrong predictions.
  report CHECKPOINT [--out DIR] [--data-dir DIR] [--limit N] [--samples 10,30,100,300] [--seed S]
      Calibration, error detection, shift and OOD report (training/report/).
  experiment NAME [--epochs N] [--quick] [--seed S] [--samples N] [--out DIR] [--data-dir DIR]
      One of the chapter's exercises (training/experiments/).

`python -m training COMMAND --help` gives the defaults.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from models.checkpoint import CheckpointError
from models.networks import Network
from training import calibrate, distributed, evaluate, experiments, report, train
from training.data import DataError, Split


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def fmt(value: object) -> str:
    """A setting as the command line writes it."""
    if isinstance(value, tuple):
        return ",".join(str(x) for x in value)
    return str(value)


def recipe(name: str) -> str:
    """Help text: each architecture's recipe value of the setting `name`."""
    values = ", ".join(f"{a} {fmt(getattr(r, name))}" for a, r in train.RECIPES.items())
    return f"default: the arch's recipe ({values})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training")
    sub = p.add_subparsers(dest="command", required=True)
    d = train.TrainConfig()

    t = sub.add_parser("train", help="train a dropout network (MLP or CNN) on Fashion-MNIST")
    t.add_argument("--arch", choices=list(train.RECIPES), default="cnn", help="(%(default)s)")
    t.add_argument("--out", type=Path, help=recipe("out"))
    t.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST IDX files")
    t.add_argument("--epochs", type=int, help=recipe("epochs"))
    t.add_argument("--batch-size", type=int, help=recipe("batch_size"))
    t.add_argument("--lr", type=float, help=recipe("lr"))
    t.add_argument("--momentum", type=float, help=recipe("momentum"))
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help=recipe("nesterov"))
    t.add_argument("--weight-decay", type=float, help=recipe("weight_decay"))
    t.add_argument("--hidden", type=ints, help="dense sizes, e.g. 256,256; " + recipe("hidden"))
    t.add_argument("--dropout", type=floats, help="one p per hidden layer; " + recipe("dropout"))
    t.add_argument("--variant", choices=["scratch", "concise"], help=f"mlp only ({d.variant})")
    t.add_argument(
        "--channels", type=ints, help=f"cnn only: channels per conv block ({fmt(d.channels)})"
    )
    t.add_argument(
        "--convs-per-block", type=int, help=f"cnn only: 3x3 convs per block ({d.convs_per_block})"
    )
    t.add_argument("--schedule", choices=train.SCHEDULES, help="lr schedule; " + recipe("schedule"))
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--val-size", type=int, default=d.val_size)
    t.add_argument("--limit", type=int, help="use only the first N training examples")
    t.add_argument("--dry-run", action="store_true", help="1 epoch on 2048 examples, N=10")
    t.add_argument("--no-resume", dest="resume", action="store_false")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(handler=train_command)

    c = sub.add_parser("calibrate", help="fit temperatures and the abstention threshold again")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--data-dir", type=Path)
    c.set_defaults(handler=calibrate_command)
    for parser_ in (t, c):
        parser_.add_argument(
            "--calibration-samples", type=int, default=100, help="MC passes used to calibrate"
        )
        parser_.add_argument("--calibration-seed", type=int, default=0)
        parser_.add_argument(
            "--target-accuracy",
            type=float,
            default=0.99,
            help="selective accuracy the abstention threshold aims at (on validation)",
        )

    e = sub.add_parser("evaluate", help="test accuracy in eval and MC mode, and agreement")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data-dir", type=Path)
    e.add_argument("--samples", type=int, default=100, help="MC passes per image")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the numbers as JSON")
    e.set_defaults(handler=evaluate_command)
    report.add_parser(sub)
    experiments.add_parser(sub)
    return p


def train_config(args: argparse.Namespace) -> train.TrainConfig:
    """The run the train command's flags ask for: the arch's recipe under the flags given. A
    flag of another architecture than --arch is refused rather than ignored."""
    if args.dry_run:
        args.epochs, args.limit, args.calibration_samples = 1, 2048, 10
    skip = {"command", "handler", "dry_run", "calibration_samples", "calibration_seed"}
    skip |= {"target_accuracy", "arch"}
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    for arch, fields in train.ARCH_FIELDS.items():
        for name in fields if arch != args.arch else ():
            if name in options:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} is a setting of --arch {arch}, not of --arch {args.arch}")
    return train.TrainConfig.for_arch(args.arch, **options)


def train_command(args: argparse.Namespace) -> None:
    cfg = train_config(args)

    def finalize(model: Network, val: Split, test: Split) -> dict[str, Any]:
        fitted = calibrate.calibrate(
            model,
            val,
            test,
            samples=args.calibration_samples,
            seed=args.calibration_seed,
            target=args.target_accuracy,
        )
        return {"calibration": fitted.to_dict()}

    # Started by torchrun: the same training, data-parallel (training/distributed.py).
    run = distributed.run if distributed.launched() else train.run
    run(cfg, finalize)


def calibrate_command(args: argparse.Namespace) -> None:
    fitted = calibrate.run(
        args.checkpoint,
        args.data_dir,
        args.calibration_samples,
        args.calibration_seed,
        args.target_accuracy,
    )
    print(json.dumps(fitted.to_dict(), indent=2))


def evaluate_command(args: argparse.Namespace) -> None:
    result = evaluate.run(args.checkpoint, args.data_dir, args.samples, args.seed)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    for key, value in result.to_dict().items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        args.handler(args)
    except (DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
