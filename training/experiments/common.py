"""What every experiment shares: the budget, the real data, training, and one assessment of
accuracy and uncertainty quality for a served MLP (through the engine) or a noise variant."""

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn import functional as F

from models.engine import Engine
from models.networks import Network
from models.stats import UncertaintyStats
from training import metrics
from training.data import Split, load_splits
from training.mc import engine_stats
from training.report import finite
from training.report.markdown import fmt
from training.report.sections import uncertainty_scores
from training.report.sets import digits_28x28
from training.train import CHAPTER_OPTIMIZER, State, TrainConfig, fit
from training.variants import NoisyMLP, mc_stats

OnEpoch = Callable[[Network, torch.optim.Optimizer, torch.Generator, State], None]


@dataclass(frozen=True)
class Budget:
    name: str
    out: Path
    epochs: int
    seed: int = 0
    samples: int = 100  # MC passes per test image
    train_limit: int | None = None  # None: all 55,000 training images
    test_limit: int | None = None  # None: all 10,000 test images
    quick: bool = False
    data_dir: Path | None = None
    command: str = ""


@dataclass(frozen=True)
class Data:
    train: Split
    val: Split
    test: Split
    digits: torch.Tensor  # OOD: scikit-learn's digits, framed in 28x28 as MNIST frames them


def load_data(b: Budget) -> Data:
    _, train, val, test = load_splits(b.data_dir, limit=b.train_limit)
    if b.test_limit is not None:
        test = Split(test.X[: b.test_limit], test.y[: b.test_limit])
        val = Split(val.X[: b.test_limit], val.y[: b.test_limit])
    digits = digits_28x28()
    return Data(train, val, test, digits[: b.test_limit] if b.test_limit else digits)


def train_mlp(
    data: Data,
    b: Budget,
    *,
    dropout: tuple[float, float],
    weight_decay: float = 0.0,
    epochs: int | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[Network, State]:
    """The chapter's network and optimiser (SGD, lr 0.1, batch 256), seeded with b.seed."""
    cfg = TrainConfig(
        **CHAPTER_OPTIMIZER,
        out=b.out / "unused.safetensors",  # nothing is written: no resume, no saving callback
        epochs=epochs or b.epochs,
        dropout=dropout,
        weight_decay=weight_decay,
        seed=b.seed,
        resume=False,
        progress=False,
    )
    return fit(cfg, data.train, data.val, on_epoch or (lambda *_: None))


class Predictor(Protocol):
    def predict(self, X: torch.Tensor) -> torch.Tensor: ...  # [n, classes] eval-mode probs
    def mc(self, X: torch.Tensor, samples: int, seed: int) -> UncertaintyStats | None: ...


class EnginePredictor:
    def __init__(self, model: Network) -> None:
        self.engine = Engine(model)

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        return self.engine.predict(X)

    def mc(self, X: torch.Tensor, samples: int, seed: int) -> UncertaintyStats | None:
        if not self.engine.supports_mc:
            return None
        return engine_stats(self.engine, X, samples, seed)


class NoisyPredictor:
    def __init__(self, model: NoisyMLP) -> None:
        self.model = model.eval()

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return F.softmax(self.model(X, stochastic=False), -1)

    def mc(self, X: torch.Tensor, samples: int, seed: int) -> UncertaintyStats | None:
        if self.model.kind == "none" or not any(self.model.ps):
            return None
        return mc_stats(self.model, X, samples, seed)


COLUMNS = (
    "eval_accuracy",
    "eval_nll",
    "eval_ece",
    "eval_error_auroc",
    "mc_accuracy",
    "mc_nll",
    "mc_ece",
    "mc_error_auroc_max_probability",
    "mc_error_auroc_agreement",
    "mc_error_auroc_mutual_information",
    "ood_digits_auroc_entropy",
)


def assess(predictor: Predictor, data: Data, b: Budget) -> dict[str, float | None]:
    """Eval and MC accuracy, NLL, ECE; error-detection AUROC; OOD AUROC on digits."""
    y = data.test.y
    p = predictor.predict(data.test.X)
    p_ood = predictor.predict(data.digits)
    conf_in, conf_out = p.max(-1).values, p_ood.max(-1).values
    row: dict[str, float | None] = {
        "eval_accuracy": metrics.accuracy(p, y),
        "eval_nll": metrics.negative_log_likelihood(p, y),
        "eval_ece": metrics.ece(p, y),
        "eval_error_auroc": metrics.error_auroc(-conf_in, p.argmax(-1) == y),
        "eval_ood_digits_auroc": metrics.ood_auroc(-conf_in, -conf_out),
    }
    stats = predictor.mc(data.test.X, b.samples, b.seed)
    if stats is None:
        return row | {k: None for k in COLUMNS if k not in row}
    mean, correct = stats.mean_probabilities, stats.class_index == y
    scores = uncertainty_scores(stats)
    ood = predictor.mc(data.digits, b.samples, b.seed + 1_000_000)
    assert ood is not None
    row |= {
        "mc_accuracy": metrics.accuracy(mean, y),
        "mc_nll": metrics.negative_log_likelihood(mean, y),
        "mc_ece": metrics.ece(mean, y),
        "mean_agreement": float(stats.agreement.mean()),
        "ood_digits_auroc_entropy": metrics.ood_auroc(
            stats.predictive_entropy, ood.predictive_entropy
        ),
    }
    for name in ("max_probability", "agreement", "mutual_information"):
        row[f"mc_error_auroc_{name}"] = metrics.error_auroc(scores[name], correct)
    return row


SHORT = {
    "eval_accuracy": "acc (eval)",
    "eval_nll": "NLL (eval)",
    "eval_ece": "ECE (eval)",
    "eval_error_auroc": "err AUROC (eval maxp)",
    "mc_accuracy": "acc (MC)",
    "mc_nll": "NLL (MC)",
    "mc_ece": "ECE (MC)",
    "mc_error_auroc_max_probability": "err AUROC (MC maxp)",
    "mc_error_auroc_agreement": "err AUROC (agreement)",
    "mc_error_auroc_mutual_information": "err AUROC (MI)",
    "ood_digits_auroc_entropy": "digits AUROC (MC entropy)",
}


def markdown_table(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], columns: Sequence[str]
) -> str:
    header = [*keys, *(SHORT.get(c, c) for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in [*keys, *columns]) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    b: Budget,
    title: str,
    notes: str,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    columns: Sequence[str] = COLUMNS,
    plots: Sequence[Path] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    settings = asdict(b) | {"out": str(b.out), "data_dir": b.data_dir and str(b.data_dir)}
    payload = {"experiment": b.name, "title": title, "settings": settings, "rows": rows}
    (b.out / "results.json").write_text(json.dumps(finite(payload | (extra or {})), indent=2))
    default_command = shlex.join([".venv/bin/python", "-m", "training", "experiment", b.name])
    md = [
        f"# {title}",
        "",
        notes,
        "",
        f"Reproduce: `{b.command or default_command}`"
        f" (seed {b.seed} for initial weights, masks and shuffling; MC with N = {b.samples} "
        f"passes, seed {b.seed}; {'quick smoke run, not a result' if b.quick else 'real data'}).",
        "",
        markdown_table(rows, keys, columns),
        *(f"![{p.stem}]({p.name})\n" for p in plots),
    ]
    path = b.out / "results.md"
    path.write_text("\n".join(md))
    return path
