"""The evaluation report: calibration in distribution, error detection, dataset shift (Ovadia et
al. 2019) and out-of-distribution detection, for eval mode and MC dropout, as JSON, Markdown and
PNG plots in a folder beside the checkpoint (`python -m training report CHECKPOINT`).

config: ReportConfig. sections: the numbers of each section, and its plots. sets: the shifted
and out-of-distribution inputs. markdown: report.json as report.md. plots: the PNG figures, for
the experiments too.
"""

import argparse
import json
import math
from pathlib import Path
from typing import Any

from models.checkpoint import load_checkpoint
from models.engine import Engine
from training import metrics
from training.data import Split, load_fashion_mnist
from training.report.config import ReportConfig
from training.report.markdown import render
from training.report.sections import (
    error_section,
    in_distribution_section,
    ood_section,
    shift_section,
    temperature_section,
)


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
