"""The d2l.ai "Dropout" exercises 1, 2, 3, 5, 6 and 7 as experiments on Fashion-MNIST."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.dropout import dropout_layer
from models.mlp import MLPConfig, build_model
from models.networks import Network
from training.data import Split
from training.experiments.common import (
    Budget,
    Data,
    EnginePredictor,
    NoisyPredictor,
    assess,
    train_mlp,
    write_results,
)
from training.report import plots
from training.train import (
    CHAPTER_OPTIMIZER,
    State,
    TrainConfig,
    evaluate_split,
    make_optimizer,
    train_epoch,
)
from training.variants import NoiseKind, NoisyMLP


def nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def dropout_grid(b: Budget, data: Data) -> Path:
    """(1) Each pair (p1, p2) of a small grid, the swapped pairs included."""
    grid = (0.2, 0.5) if b.quick else (0.2, 0.5, 0.8)
    rows = []
    for p1 in grid:
        for p2 in grid:
            model, _ = train_mlp(data, b, dropout=(p1, p2))
            rows.append({"p1": p1, "p2": p2, **assess(EnginePredictor(model), data, b)})
    names = [f"{p:g}" for p in grid]
    figures = []
    for key, title in (
        ("mc_accuracy", "test accuracy (MC)"),
        ("mc_error_auroc_max_probability", "error-detection AUROC (MC max prob.)"),
        ("mc_ece", "ECE (MC)"),
        ("mc_nll", "NLL (MC)"),
    ):
        values = [[nan_if_none(r[key]) for r in rows if r["p1"] == p1] for p1 in grid]
        path = b.out / f"grid_{key}.png"
        plots.heatmap(
            path,
            values,
            names,
            names,
            xlabel="p2 (second hidden layer)",
            ylabel="p1 (first hidden layer)",
            title=title,
        )
        figures.append(path)
    notes = (
        f"Dropout probability p1 after the first hidden layer, p2 after the second; "
        f"784-256-256-10, SGD lr 0.1, batch 256, {b.epochs} epochs."
    )
    return write_results(
        b, "Exercise 1: dropout probabilities per layer", notes, rows, ["p1", "p2"], plots=figures
    )


def epochs_gap(b: Budget, data: Data) -> Path:
    """(2) Long training with and without dropout: the train/test gap per epoch."""
    train_probe = Split(data.train.X[:10_000], data.train.y[:10_000])
    curves: dict[str, list[dict[str, float]]] = {}
    rows = []
    for label, ps in (("dropout 0.5/0.5", (0.5, 0.5)), ("no dropout", (0.0, 0.0))):
        curve: list[dict[str, float]] = []

        def on_epoch(
            m: Network, _o: Any, _g: Any, st: State, c: list[dict[str, float]] = curve
        ) -> None:
            train_loss, train_acc = evaluate_split(m, train_probe)
            test_loss, test_acc = evaluate_split(m, data.test)
            c.append(
                {
                    "epoch": st.epoch,
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "test_loss": test_loss,
                    "test_accuracy": test_acc,
                }
            )

        model, _ = train_mlp(data, b, dropout=ps, on_epoch=on_epoch)
        curves[label] = curve
        last = curve[-1]
        best = max(curve, key=lambda r: r["test_accuracy"])
        rows.append(
            {
                "model": label,
                "best_test_accuracy": best["test_accuracy"],
                "best_epoch": best["epoch"],
                "final_gap_loss": last["test_loss"] - last["train_loss"],
                "final_gap_accuracy": last["train_accuracy"] - last["test_accuracy"],
            }
            | assess(EnginePredictor(model), data, b)
        )
    epochs = list(range(1, b.epochs + 1))
    path = plots.line_panels(
        b.out / "gap_over_epochs.png",
        epochs,
        {
            "test loss - train loss": {
                k: [r["test_loss"] - r["train_loss"] for r in c] for k, c in curves.items()
            },
            "train accuracy - test accuracy": {
                k: [r["train_accuracy"] - r["test_accuracy"] for r in c] for k, c in curves.items()
            },
            "test accuracy": {k: [r["test_accuracy"] for r in c] for k, c in curves.items()},
            "test loss": {k: [r["test_loss"] for r in c] for k, c in curves.items()},
        },
        "epoch",
    )
    notes = (
        f"{b.epochs} epochs, SGD lr 0.1, batch 256. Train numbers: eval mode on the first "
        "10,000 training images, so that both models are measured the same way."
    )
    keys = ["model", "best_test_accuracy", "best_epoch", "final_gap_loss", "final_gap_accuracy"]
    return write_results(
        b,
        "Exercise 2: more epochs, with and without dropout",
        notes,
        rows,
        keys,
        plots=[path],
        extra={"curves": curves},
    )


def layer_variances(model: Network, X: torch.Tensor, seed: int) -> list[float]:
    """Per hidden layer: the variance over inputs of each post-ReLU unit, averaged over units,
    in eval mode (noise off) and in a training-mode pass (noise on: after the dropout mask, what
    the next layer sees during training)."""
    generator = torch.Generator().manual_seed(seed)
    out: list[float] = []
    with torch.inference_mode():
        clean = noisy = model.embed(X)
        for linear, p in zip(model.layers()[:-1], model.config.dropout, strict=True):
            clean = torch.relu(linear(clean))
            noisy = dropout_layer(torch.relu(linear(noisy)), p, generator)
            out += [float(clean.var(0).mean()), float(noisy.var(0).mean())]
    return out


def activation_variance(b: Budget, data: Data) -> Path:
    """(3) The variance of each hidden layer's activations over training."""
    X = data.val.X[:2000]
    series: dict[str, list[list[float]]] = {}
    rows = []
    for label, ps in (("dropout 0.5/0.5", (0.5, 0.5)), ("no dropout", (0.0, 0.0))):
        torch.manual_seed(b.seed)  # the initial weights fit() draws
        values = [layer_variances(build_model(MLPConfig(dropout=ps)), X, b.seed)]

        def on_epoch(
            m: Network, _o: Any, _g: Any, _s: State, v: list[list[float]] = values
        ) -> None:
            v.append(layer_variances(m, X, b.seed))

        train_mlp(data, b, dropout=ps, on_epoch=on_epoch)
        series[label] = values
        for epoch, v in enumerate(values):
            rows.append(
                {
                    "model": label,
                    "epoch": epoch,
                    "layer1_var": v[0],
                    "layer1_var_with_dropout": v[1],
                    "layer2_var": v[2],
                    "layer2_var_with_dropout": v[3],
                }
            )
    panels = {}
    for layer in (1, 2):
        i = 2 * (layer - 1)
        panels[f"hidden layer {layer}"] = {
            "no dropout": [v[i] for v in series["no dropout"]],
            "dropout, noise off": [v[i] for v in series["dropout 0.5/0.5"]],
            "dropout, noise on": [v[i + 1] for v in series["dropout 0.5/0.5"]],
        }
    path = plots.line_panels(
        b.out / "activation_variance.png",
        list(range(b.epochs + 1)),
        panels,
        "epoch (0 = initial weights)",
    )
    notes = (
        "Variance over 2,000 validation images of each post-ReLU hidden unit, averaged over "
        "the 256 units; 'noise on' multiplies by a training-time dropout mask first. "
        f"SGD lr 0.1, batch 256, {b.epochs} epochs."
    )
    keys = [
        "model",
        "epoch",
        "layer1_var",
        "layer1_var_with_dropout",
        "layer2_var",
        "layer2_var_with_dropout",
    ]
    return write_results(
        b,
        "Exercise 3: variance of the hidden activations",
        notes,
        rows,
        keys,
        columns=(),
        plots=[path],
    )


def weight_decay(b: Budget, data: Data, decay: float = 5e-4) -> Path:
    """(5) Dropout versus weight decay versus both."""
    variants = [
        ("neither", (0.0, 0.0), 0.0),
        ("dropout 0.5/0.5", (0.5, 0.5), 0.0),
        (f"weight decay {decay:g}", (0.0, 0.0), decay),
        ("both", (0.5, 0.5), decay),
    ]
    rows = []
    for label, ps, wd in variants:
        model, _ = train_mlp(data, b, dropout=ps, weight_decay=wd)
        rows.append({"model": label} | assess(EnginePredictor(model), data, b))
    path = bar_plot(b, rows)
    notes = (
        f"SGD lr 0.1, batch 256, {b.epochs} epochs; weight decay {decay:g} (L2 through SGD's "
        "weight_decay). Without dropout there is no MC distribution: MC columns are n/a."
    )
    return write_results(
        b, "Exercise 5: dropout versus weight decay", notes, rows, ["model"], plots=[path]
    )


def bar_plot(b: Budget, rows: Sequence[dict[str, Any]]) -> Path:
    def col(key: str) -> list[float]:
        return [nan_if_none(r.get(key)) for r in rows]

    return plots.bars(
        b.out / "comparison.png",
        [str(r["model"]) for r in rows],
        {
            "test accuracy (eval)": col("eval_accuracy"),
            "test accuracy (MC)": col("mc_accuracy"),
            "ECE (MC)": col("mc_ece"),
            "NLL (MC)": col("mc_nll"),
            "error AUROC (MC max prob.)": col("mc_error_auroc_max_probability"),
            "digits OOD AUROC (MC entropy)": col("ood_digits_auroc_entropy"),
        },
    )


def train_noisy(data: Data, b: Budget, kind: NoiseKind, p: float) -> NoisyMLP:
    """Same optimiser, batch, epochs, seed and shuffling as train_mlp, for a NoisyMLP."""
    torch.manual_seed(b.seed)
    model = NoisyMLP(kind, (p, p))
    optimizer = make_optimizer(
        model, TrainConfig(**CHAPTER_OPTIMIZER, epochs=b.epochs, seed=b.seed)
    )
    shuffle = torch.Generator().manual_seed(b.seed)
    for epoch in range(b.epochs):
        train_epoch(model, optimizer, data.train, 256, shuffle, False, f"epoch {epoch + 1}")
    return model.eval()


def noise_kinds(b: Budget, data: Data, kinds: Sequence[NoiseKind], title: str, notes: str) -> Path:
    rows = []
    for kind in kinds:
        model = train_noisy(data, b, kind, 0.0 if kind == "none" else 0.5)
        rows.append({"model": kind} | assess(NoisyPredictor(model), data, b))
    return write_results(b, title, notes, rows, ["model"], plots=[bar_plot(b, rows)])


def dropconnect(b: Budget, data: Data) -> Path:
    """(6) Dropout on the weights (DropConnect) instead of the activations."""
    notes = (
        "784-256-256-10, p = 0.5 at both places, SGD lr 0.1, batch 256, "
        f"{b.epochs} epochs, same seed for all. DropConnect masks the weights of the 2nd and "
        "3rd layers (those that read the hidden layers) with one mask per minibatch in "
        "training and one per pass in MC (each pass is one sub-network for all inputs); "
        "eval mode uses the mean weights. MC with this module's own loop."
    )
    return noise_kinds(
        b, data, ["dropout", "dropconnect", "none"], "Exercise 6: DropConnect versus dropout", notes
    )


def gaussian_noise(b: Budget, data: Data) -> Path:
    """(7) Gaussian multiplicative noise of matched variance versus dropout."""
    notes = (
        "784-256-256-10, SGD lr 0.1, batch 256, "
        f"{b.epochs} epochs, same seed for all. Gaussian: each hidden activation times "
        "1 + N(0, p/(1-p)), the mean and variance of the inverted dropout mask at p = 0.5 "
        "(Srivastava et al. 2014, section 10). MC with this module's own loop."
    )
    return noise_kinds(
        b,
        data,
        ["dropout", "gaussian", "none"],
        "Exercise 7: Gaussian multiplicative noise versus dropout",
        notes,
    )
