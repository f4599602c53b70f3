"""Fit the temperatures and the abstention threshold on the validation split, and measure the
threshold's coverage on the test split; the result goes into the checkpoint's metadata."""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from models.calibration import apply_threshold, fit_temperature, nll, select_threshold
from models.checkpoint import load_checkpoint, save_checkpoint
from models.engine import Engine
from models.networks import Network
from models.stats import summarize
from training.data import VAL_SIZE, Split, load_splits
from training.mc import engine_logits


@dataclass(frozen=True)
class Calibration:
    samples: int  # MC passes used to fit; the threshold is on agreement at this N
    seed: int
    temperature_eval: float
    temperature_mc: float
    nll_val_eval: tuple[float, float]  # (before, after) temperature scaling
    nll_val_mc: tuple[float, float]
    target_selective_accuracy: float
    abstain_below_agreement: float
    target_reached: bool  # on validation; if not, the threshold answers only unanimous passes
    coverage_val: float
    selective_accuracy_val: float
    coverage_test: float | None = None
    selective_accuracy_test: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nll_val_eval"], d["nll_val_mc"] = list(self.nll_val_eval), list(self.nll_val_mc)
        return d


def eval_logits(model: Network, X: torch.Tensor, block: int = 2048) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(X[i : i + block]) for i in range(0, len(X), block)])


def agreement_and_correct(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    stats = summarize(F.softmax(logits.double() / temperature, dim=-1))
    return stats.agreement, stats.class_index == labels


def calibrate(
    model: Network,
    val: Split,
    test: Split | None = None,
    *,
    samples: int = 100,
    seed: int = 0,
    target: float = 0.99,
) -> Calibration:
    raw = Engine(model)
    z_eval, z_mc = eval_logits(model, val.X), engine_logits(raw, val.X, samples, seed)
    t_eval, t_mc = fit_temperature(z_eval, val.y), fit_temperature(z_mc, val.y)
    threshold = select_threshold(*agreement_and_correct(z_mc, val.y, t_mc), target)
    coverage_test = accuracy_test = None
    if test is not None:
        test_logits = engine_logits(raw, test.X, samples, seed)
        on_test = apply_threshold(
            *agreement_and_correct(test_logits, test.y, t_mc), threshold.threshold
        )
        coverage_test, accuracy_test = on_test.coverage, on_test.selective_accuracy
    return Calibration(
        samples=samples,
        seed=seed,
        temperature_eval=t_eval,
        temperature_mc=t_mc,
        nll_val_eval=(nll(z_eval, val.y), nll(z_eval, val.y, t_eval)),
        nll_val_mc=(nll(z_mc, val.y), nll(z_mc, val.y, t_mc)),
        target_selective_accuracy=target,
        abstain_below_agreement=threshold.threshold,
        target_reached=threshold.selective_accuracy >= target,
        coverage_val=threshold.coverage,
        selective_accuracy_val=threshold.selective_accuracy,
        coverage_test=coverage_test,
        selective_accuracy_test=accuracy_test,
    )


def run(
    checkpoint: Path, data_dir: Path | None, samples: int, seed: int, target: float
) -> Calibration:
    """Calibrate an existing checkpoint in place (an atomic rewrite with the same weights)."""
    ckpt = load_checkpoint(checkpoint)
    val_size = int(ckpt.metadata.get("training", {}).get("val_size", VAL_SIZE))
    _, _, val, test = load_splits(data_dir, val_size=val_size)
    result = calibrate(ckpt.model, val, test, samples=samples, seed=seed, target=target)
    meta = {k: v for k, v in ckpt.metadata.items() if k not in ("config", "labels")}
    save_checkpoint(checkpoint, ckpt.model, ckpt.labels, meta | {"calibration": result.to_dict()})
    return result
