"""The evaluation report: calibration in distribution, error detection, dataset shift (Ovadia et
al. 2019) and out-of-distribution detection, for eval mode and MC dropout, as JSON, Markdown and
PNG plots in a folder beside the checkpoint."""

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from models.calibration import nll as logits_nll
from models.checkpoint import Checkpoint, load_checkpoint
from models.engine import Engine
from models.mlp import forward_layers
from models.stats import UncertaintyStats
from training import metrics, plots
from training.data import Split, load_fashion_mnist
from training.mc import BLOCK, engine_logits, engine_stats
from training.report_md import render

ROTATIONS = tuple(range(0, 181, 15))
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
SCORES = ("max_probability", "agreement", "predictive_entropy", "mutual_information")


@dataclass(frozen=True)
class ReportConfig:
    checkpoint: Path
    out: Path | None = None  # default: <checkpoint stem>.report/ beside the checkpoint
    data_dir: Path | None = None
    limit: int | None = None  # the first N test images (and at most N of each OOD set)
    samples: tuple[int, ...] = (10, 30, 100, 300)
    seed: int = 0
    block: int = BLOCK  # images per seeded MC request (training.mc)

    def __post_init__(self) -> None:
        if not self.samples or any(n < 1 for n in self.samples):
            raise ValueError(f"samples must be positive integers, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")

    @property
    def folder(self) -> Path:
        return self.out or self.checkpoint.with_name(self.checkpoint.stem + ".report")

    @property
    def reference_samples(self) -> int:
        """N for error detection, shift and OOD: 100 if asked for, else the largest."""
        return 100 if 100 in self.samples else max(self.samples)


def quality(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": metrics.accuracy(probs, labels),
        "nll": metrics.negative_log_likelihood(probs, labels),
        "brier": metrics.brier(probs, labels),
        "ece": metrics.ece(probs, labels),
    }


def uncertainty_scores(stats: UncertaintyStats) -> dict[str, torch.Tensor]:
    """Higher means less trustworthy, for each of the four scores."""
    return {
        "max_probability": -stats.mean_probabilities.max(-1).values,
        "agreement": -stats.agreement,
        "predictive_entropy": stats.predictive_entropy,
        "mutual_information": stats.mutual_information,
    }


def error_detection(stats: UncertaintyStats, labels: torch.Tensor) -> dict[str, dict[str, float]]:
    correct = stats.class_index == labels
    return {
        name: {"auroc": metrics.error_auroc(s, correct), "aurc": metrics.aurc(s, correct)}
        for name, s in uncertainty_scores(stats).items()
    }


def rotate(X: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate [n, 784] images about their centre (bilinear, zeros outside)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    images = X.reshape(-1, 1, 28, 28)
    grid = F.affine_grid(theta.expand(len(X), 2, 3), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(len(X), -1).clamp(0.0, 1.0)


def add_noise(X: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed))
    return (X + sigma * noise).clamp(0.0, 1.0)


def digits_28x28(box: int = 20) -> torch.Tensor:
    """scikit-learn's 1,797 handwritten digits (8x8, ink 0..16 on a 0 background), bilinearly
    upscaled to box x box and centred in 28x28, in [0, 1]: a light object on a dark background,
    like Fashion-MNIST. box=20 frames them as MNIST does (a 20x20 digit, 4 empty pixels around
    it); box=28 stretches them over the whole frame."""
    from sklearn.datasets import load_digits

    if not 8 <= box <= 28:
        raise ValueError(f"box must be in [8, 28], got {box}")
    images = torch.from_numpy(load_digits().images).float().div(16.0)[:, None]
    big = F.interpolate(images, size=(box, box), mode="bilinear", align_corners=False)
    margin = (28 - box) // 2
    big = F.pad(big, (margin, 28 - box - margin, margin, 28 - box - margin))
    return big.reshape(len(big), -1).clamp(0.0, 1.0)


def ood_sets(test_X: torch.Tensor, limit: int | None, seed: int) -> dict[str, torch.Tensor]:
    n = min(len(test_X), 2000)
    sets = {
        "digits": digits_28x28(box=20),  # framed as MNIST frames its digits
        "digits_full_frame": digits_28x28(box=28),
        "uniform_noise": torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)),
    }
    return {k: v[:limit] if limit else v for k, v in sets.items()} | {"inverted": 1.0 - test_X}


def shift_rows(
    engine: Engine,
    cfg: ReportConfig,
    split: Split,
    levels: Sequence[float],
    transform: Callable[[torch.Tensor, float], torch.Tensor],
) -> list[dict[str, float]]:
    rows = []
    for level in levels:
        X = transform(split.X, level)
        eval_probs = engine.predict(X)
        stats = engine_stats(engine, X, cfg.reference_samples, cfg.seed, cfg.block)
        mc = stats.mean_probabilities
        rows.append(
            {
                "level": float(level),
                "eval_accuracy": metrics.accuracy(eval_probs, split.y),
                "mc_accuracy": metrics.accuracy(mc, split.y),
                "eval_ece": metrics.ece(eval_probs, split.y),
                "mc_ece": metrics.ece(mc, split.y),
                "eval_nll": metrics.negative_log_likelihood(eval_probs, split.y),
                "mc_nll": metrics.negative_log_likelihood(mc, split.y),
                "mean_agreement": float(stats.agreement.mean()),
            }
        )
    return rows


def temperature_section(
    ckpt: Checkpoint, engine: Engine, cfg: ReportConfig, split: Split, folder: Path
) -> dict[str, Any] | None:
    calibration = ckpt.metadata.get("calibration")
    if not isinstance(calibration, dict) or "temperature_eval" not in calibration:
        return None
    t_eval = float(calibration["temperature_eval"])
    t_mc = float(calibration.get("temperature_mc", t_eval))
    with torch.inference_mode():
        eval_logits = forward_layers(
            ckpt.model.layers(), ckpt.config.dropout, split.X, dropout=False
        )
    logits = engine_logits(engine, split.X, cfg.reference_samples, cfg.seed, cfg.block)
    section: dict[str, Any] = {"temperature_eval": t_eval, "temperature_mc": t_mc}
    diagrams = {}
    for mode, z, t in (("eval", eval_logits, t_eval), ("mc", logits, t_mc)):
        for when, temperature in (("before", 1.0), ("after", t)):
            probs = F.softmax(z.double() / temperature, -1)
            probs = probs.mean(0) if z.dim() == 3 else probs
            q = quality(probs, split.y)
            q["nll"] = logits_nll(z, split.y, temperature)
            section[f"{mode}_{when}"] = q
            if when == "after":
                diagrams[f"{mode}, T={temperature:.3f}"] = metrics.reliability(probs, split.y)
    plots.reliability_diagrams(folder / "reliability_temperature.png", diagrams)
    return section


def in_distribution_section(
    engine: Engine, cfg: ReportConfig, test: Split, eval_probs: torch.Tensor, folder: Path
) -> tuple[dict[str, Any], dict[int, UncertaintyStats]]:
    y, ns = test.y, sorted(cfg.samples)
    section: dict[str, Any] = {"eval": quality(eval_probs, y), "mc": {}}
    stats_by_n = {n: engine_stats(engine, test.X, n, cfg.seed, cfg.block) for n in ns}
    for n, stats in stats_by_n.items():
        section["mc"][str(n)] = quality(stats.mean_probabilities, y)
        section["mc"][str(n)]["mean_agreement"] = float(stats.agreement.mean())
    ref = cfg.reference_samples
    diagrams = {
        "eval": metrics.reliability(eval_probs, y),
        f"MC, N={ref}": metrics.reliability(stats_by_n[ref].mean_probabilities, y),
    }
    section["reliability"] = {k: vars(r) for k, r in diagrams.items()}
    plots.reliability_diagrams(folder / "reliability.png", diagrams)
    panels = {
        m: {"MC": [section["mc"][str(n)][m] for n in ns], "eval": [section["eval"][m]] * len(ns)}
        for m in ("accuracy", "nll", "brier", "ece")
    }
    plots.line_panels(folder / "metrics_vs_samples.png", ns, panels, "MC passes N", logx=True)
    return section, stats_by_n


def error_section(
    stats: UncertaintyStats, eval_probs: torch.Tensor, y: torch.Tensor, folder: Path
) -> dict[str, Any]:
    correct = stats.class_index == y
    scores = error_detection(stats, y)
    # The dropout-off baseline detects the eval-mode errors with the eval-mode max probability.
    eval_conf, eval_correct = eval_probs.max(-1).values, eval_probs.argmax(-1) == y
    scores["eval_max_probability"] = {
        "auroc": metrics.error_auroc(-eval_conf, eval_correct),
        "aurc": metrics.aurc(-eval_conf, eval_correct),
    }
    plots.risk_coverage(
        folder / "risk_coverage.png",
        {k: metrics.risk_coverage(s, correct) for k, s in uncertainty_scores(stats).items()},
    )
    return {
        "samples": stats.samples,
        "mc_errors": int((~correct).sum()),
        "eval_errors": int((~eval_correct).sum()),
        "scores": scores,
    }


def shift_section(engine: Engine, cfg: ReportConfig, test: Split, folder: Path) -> dict[str, Any]:
    rotation = shift_rows(engine, cfg, test, ROTATIONS, rotate)
    noise = shift_rows(engine, cfg, test, NOISE_LEVELS, lambda X, s: add_noise(X, s, cfg.seed))
    for name, rows, xlabel in (("rotation", rotation, "degrees"), ("noise", noise, "sigma")):
        panels = {
            "accuracy": {m: [r[f"{m}_accuracy"] for r in rows] for m in ("eval", "mc")},
            "ECE": {m: [r[f"{m}_ece"] for r in rows] for m in ("eval", "mc")},
            "mean agreement": {"mc": [r["mean_agreement"] for r in rows]},
        }
        plots.line_panels(folder / f"shift_{name}.png", [r["level"] for r in rows], panels, xlabel)
    return {"samples": cfg.reference_samples, "rotation": rotation, "noise": noise}


def ood_section(
    engine: Engine,
    cfg: ReportConfig,
    test: Split,
    stats: UncertaintyStats,
    eval_probs: torch.Tensor,
) -> dict[str, Any]:
    in_scores = uncertainty_scores(stats) | {"eval_max_probability": -eval_probs.max(-1).values}
    sets: dict[str, Any] = {}
    for name, X in ood_sets(test.X, cfg.limit, cfg.seed).items():
        out_stats = engine_stats(engine, X, stats.samples, cfg.seed + 1_000_000, cfg.block)
        out_scores = uncertainty_scores(out_stats) | {
            "eval_max_probability": -engine.predict(X).max(-1).values
        }
        sets[name] = {"examples": len(X)} | {
            k: {
                "auroc": metrics.ood_auroc(in_scores[k], out_scores[k]),
                "fpr_at_95_tpr": metrics.fpr_at_tpr(in_scores[k], out_scores[k]),
            }
            for k in in_scores
        }
    return {"samples": stats.samples, "in_distribution_examples": len(test.y), "sets": sets}


def build(cfg: ReportConfig) -> dict[str, Any]:
    folder = cfg.folder
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(cfg.checkpoint)
    engine = Engine(ckpt.model)  # temperature 1: the raw model; the temperature section adds T
    data = load_fashion_mnist(cfg.data_dir)
    test = Split.from_numpy(data.test_images, data.test_labels)
    if cfg.limit is not None:
        test = Split(test.X[: cfg.limit], test.y[: cfg.limit])
    eval_probs = engine.predict(test.X)
    in_dist, stats_by_n = in_distribution_section(engine, cfg, test, eval_probs, folder)
    stats = stats_by_n[cfg.reference_samples]
    return {
        "checkpoint": {
            "path": str(cfg.checkpoint),
            "sha256": ckpt.sha256,
            "config": ckpt.config.to_dict(),
            "metrics": ckpt.metadata.get("metrics"),
            "training": ckpt.metadata.get("training"),
        },
        "settings": {
            "examples": len(test.y),
            "samples": sorted(cfg.samples),
            "reference_samples": cfg.reference_samples,
            "seed": cfg.seed,
            "block": cfg.block,
            "ece_bins": metrics.ECE_BINS,
        },
        "in_distribution": in_dist,
        "error_detection": error_section(stats, eval_probs, test.y, folder),
        "shift": shift_section(engine, cfg, test, folder),
        "ood": ood_section(engine, cfg, test, stats, eval_probs),
        "temperature": temperature_section(ckpt, engine, cfg, test, folder),
    }


def finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def run(cfg: ReportConfig) -> Path:
    report = finite(build(cfg))
    folder = cfg.folder
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(render(report))
    return folder


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    r = sub.add_parser("report", help="calibration, error detection, shift and OOD report")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("--out", type=Path, help="folder (default: <checkpoint stem>.report/)")
    r.add_argument("--data-dir", type=Path)
    r.add_argument("--limit", type=int, help="only the first N test images (and N per OOD set)")
    r.add_argument(
        "--samples",
        type=lambda text: tuple(int(x) for x in text.split(",")),
        default=ReportConfig.samples,
        help="MC passes to compare, comma-separated (10,30,100,300)",
    )
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(handler=main)


def main(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    print(run(ReportConfig(**options)) / "report.md")
