"""How far 2-process DDP training lands from 1-process training with the same settings.

python scripts/ddp_vs_single.py --seeds 10 -- --limit 4096 --epochs 2

Trains each seed twice, `torchrun --standalone --nproc_per_node=N -m training train ARGS` and
`python -m training train ARGS`, and prints the test accuracy and loss of both and their
difference. The runs share the initial weights, the shuffled order and every step's global batch;
only the dropout masks differ (see training/distributed.py), so the spread of the differences is
what tests/training/test_distributed.py allows.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from models.checkpoint import load_checkpoint


def train(command: list[str], out: Path, seed: int, args: list[str]) -> dict[str, float]:
    flags = ["--seed", str(seed), "--out", str(out), "--no-progress", "--no-resume"]
    subprocess.run(
        [*command, "-m", "training", "train", *flags, *args], check=True, capture_output=True
    )
    metrics: dict[str, float] = load_checkpoint(out).metadata["metrics"]
    return metrics


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("args", nargs="*", help="python -m training train options")
    opts = p.parse_args()
    torchrun = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        f"--nproc_per_node={opts.nproc}",
    ]
    diffs: dict[str, list[float]] = {"test_accuracy": [], "test_loss": []}
    print("seed  acc 1-proc  acc DDP  diff    | loss 1-proc  loss DDP  diff")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(opts.seeds):
            one = train([sys.executable], Path(tmp, "one.safetensors"), seed, opts.args)
            ddp = train(torchrun, Path(tmp, "ddp.safetensors"), seed, opts.args)
            for key in diffs:
                diffs[key].append(ddp[key] - one[key])
            print(
                f"{seed:4d}  {one['test_accuracy']:.4f}      {ddp['test_accuracy']:.4f}   "
                f"{diffs['test_accuracy'][-1]:+.4f} | {one['test_loss']:.4f}       "
                f"{ddp['test_loss']:.4f}    {diffs['test_loss'][-1]:+.4f}",
                flush=True,
            )
    for key, values in diffs.items():
        print(
            f"{key}: mean diff {statistics.mean(values):+.4f}, "
            f"std {statistics.stdev(values):.4f}, max |diff| {max(map(abs, values)):.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
