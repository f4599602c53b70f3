"""Test-set accuracy in eval and MC mode, and agreement on right versus wrong predictions."""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.engine import Engine, engine_for
from training.data import Split, load_fashion_mnist
from training.mc import BLOCK, engine_stats


@dataclass(frozen=True)
class Evaluation:
    examples: int
    eval_accuracy: float
    mc_samples: int
    mc_accuracy: float
    mean_agreement: float
    mean_agreement_right: float
    mean_agreement_wrong: float
    mc_wrong: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate_engine(
    engine: Engine, split: Split, samples: int, seed: int, batch: int = BLOCK
) -> Evaluation:
    eval_pred = torch.cat(
        [engine.predict(split.X[i : i + batch]).argmax(-1) for i in range(0, len(split.y), batch)]
    )
    stats = engine_stats(engine, split.X, samples, seed, batch)
    agreement, right = stats.agreement, stats.class_index == split.y
    return Evaluation(
        examples=len(split.y),
        eval_accuracy=float((eval_pred == split.y).double().mean()),
        mc_samples=samples,
        mc_accuracy=float(right.double().mean()),
        mean_agreement=float(agreement.mean()),
        mean_agreement_right=float(agreement[right].mean()),
        mean_agreement_wrong=float(agreement[~right].mean()) if (~right).any() else float("nan"),
        mc_wrong=int((~right).sum()),
    )


def run(checkpoint: Path, data_dir: Path | None, samples: int, seed: int) -> Evaluation:
    engine = engine_for(load_checkpoint(checkpoint))
    data = load_fashion_mnist(data_dir)
    return evaluate_engine(
        engine, Split.from_numpy(data.test_images, data.test_labels), samples, seed
    )
