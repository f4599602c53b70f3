"""PNG plots for the report and the experiments. Figures are built with matplotlib's object API
(Figure + its Agg canvas), so nothing touches pyplot's global state or needs a display.
matplotlib (the "report" extra) is imported when a plot is drawn, so that the rest of the
training CLI runs without it."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.metrics import Reliability, RiskCoverage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Series = Mapping[str, Sequence[float]]


def new_figure(**kwargs: Any) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: "Figure", path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _grid(panels: int) -> tuple[int, int]:
    cols = min(panels, 3)
    return math.ceil(panels / cols), cols


def line_panels(
    path: Path,
    x: Sequence[float],
    panels: Mapping[str, Series],
    xlabel: str,
    *,
    logx: bool = False,
    title: str = "",
) -> Path:
    """One panel per metric (the panel's title), one line per series in it."""
    rows, cols = _grid(len(panels))
    fig = new_figure(figsize=(4.2 * cols, 3.3 * rows))
    for i, (name, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, ys in series.items():
            ax.plot(list(x)[: len(ys)], list(ys), marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def reliability_diagrams(path: Path, diagrams: Mapping[str, Reliability]) -> Path:
    """Accuracy per confidence bin against the diagonal, with the share of inputs per bin."""
    fig = new_figure(figsize=(4 * len(diagrams), 4.2))
    for i, (name, r) in enumerate(diagrams.items()):
        ax = fig.add_subplot(1, len(diagrams), i + 1)
        lows, width = r.edges[:-1], r.edges[1] - r.edges[0]
        accs = [0.0 if math.isnan(a) else a for a in r.accuracy]
        confs = [0.0 if math.isnan(c) else c for c in r.confidence]
        ax.bar(lows, accs, width=width, align="edge", edgecolor="black", label="accuracy")
        ax.bar(
            lows,
            [c - a for a, c in zip(accs, confs, strict=True)],
            bottom=accs,
            width=width,
            align="edge",
            color="red",
            alpha=0.3,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        total = max(1, sum(r.counts))
        ax.plot(
            [lo + width / 2 for lo in lows],
            [c / total for c in r.counts],
            "g.-",
            label="share of inputs",
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(f"{name}: ECE {r.ece:.4f}")
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def risk_coverage(path: Path, curves: Mapping[str, RiskCoverage]) -> Path:
    fig = new_figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, rc in curves.items():
        ax.plot(rc.coverage.numpy(), rc.risk.numpy(), label=f"{name} (AURC {rc.aurc:.4f})")
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk (error rate of the answered)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def heatmap(
    path: Path,
    values: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    fig = new_figure(figsize=(1.1 * len(cols) + 2.5, 0.8 * len(rows) + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(cols)), list(cols))
    ax.set_yticks(range(len(rows)), list(rows))
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.4f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def bars(path: Path, labels: Sequence[str], panels: Mapping[str, Sequence[float]]) -> Path:
    """One panel per metric, one bar per variant."""
    rows, cols = _grid(len(panels))
    fig = new_figure(figsize=(4.2 * cols, 3.3 * rows))
    for i, (name, ys) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.bar(range(len(ys)), list(ys))
        ax.set_xticks(range(len(labels)), list(labels), rotation=30, ha="right", fontsize=7)
        finite = [y for y in ys if not math.isnan(y)]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = (hi - lo) * 0.3 or abs(hi) * 0.05 or 0.01
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
