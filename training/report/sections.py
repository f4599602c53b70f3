"""The report's sections: each gathers its numbers (training.metrics) for eval mode and MC
dropout, and draws its plots into the report's folder."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from models.calibration import nll as logits_nll
from models.checkpoint import Checkpoint
from models.engine import Engine
from models.stats import UncertaintyStats
from training import calibrate, metrics
from training.data import Split
from training.mc import engine_logits, engine_stats
from training.report import plots
from training.report.config import ReportConfig
from training.report.sets import NOISE_LEVELS, ROTATIONS, add_noise, ood_sets, rotate


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
    eval_logits = calibrate.eval_logits(ckpt.model, split.X)
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
