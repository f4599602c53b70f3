import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.engine import Engine
from training import __main__ as cli
from training.data import LABELS, Split, load_splits
from training.report.config import ReportConfig
from training.report.sections import temperature_section
from training.report.sets import NOISE_LEVELS, add_noise, digits_28x28, rotate
from training.train import TrainConfig, fit

PLOTS = (
    "reliability.png",
    "reliability_temperature.png",
    "metrics_vs_samples.png",
    "risk_coverage.png",
    "shift_rotation.png",
    "shift_noise.png",
)
# The scores of training.report.sections.uncertainty_scores, higher meaning less trustworthy.
SCORES = ("max_probability", "agreement", "predictive_entropy", "mutual_information")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small network trained for 2 epochs on 2,048 real images, with stored temperatures."""
    folder = tmp_path_factory.mktemp("report")
    cfg = TrainConfig(
        out=folder / "m.safetensors",
        hidden=(64, 64),
        epochs=2,
        limit=2048,
        batch_size=64,
        resume=False,
        progress=False,
    )
    _, train, val, _ = load_splits(cfg.data_dir, limit=cfg.limit)
    model, _ = fit(cfg, train, val, lambda *_: None)
    calibration = {"temperature_eval": 1.5, "temperature_mc": 1.25}
    save_checkpoint(cfg.out, model, LABELS, {"calibration": calibration})
    return cfg.out


def unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


def test_report_command_writes_json_markdown_and_plots(checkpoint: Path) -> None:
    assert cli.main(["report", str(checkpoint), "--limit", "200", "--samples", "10"]) == 0
    folder = checkpoint.with_name("m.report")
    for name in ("report.json", "report.md", *PLOTS):
        assert (folder / name).stat().st_size > 0, name
    r = json.loads((folder / "report.json").read_text())
    assert r["settings"]["examples"] == 200
    assert r["settings"]["reference_samples"] == 10

    ind = r["in_distribution"]
    for q in (ind["eval"], ind["mc"]["10"]):
        assert unit(q["accuracy"])
        assert unit(q["ece"])
        assert q["accuracy"] > 0.5  # chance is 0.1
        assert q["nll"] > 0
        assert 0 <= q["brier"] <= 2
    assert sum(ind["reliability"]["eval"]["counts"]) == 200

    scores = r["error_detection"]["scores"]
    assert set(scores) == {*SCORES, "eval_max_probability"}
    assert all(unit(s["auroc"]) and unit(s["aurc"]) for s in scores.values())
    assert scores["max_probability"]["auroc"] > 0.6

    rotation, noise = r["shift"]["rotation"], r["shift"]["noise"]
    assert [row["level"] for row in rotation] == list(range(0, 181, 15))
    assert len(noise) == len(NOISE_LEVELS)
    # Level 0 is the unshifted test set: the same eval predictions as in distribution.
    assert rotation[0]["eval_accuracy"] == pytest.approx(ind["eval"]["accuracy"])
    assert noise[0]["eval_accuracy"] == pytest.approx(ind["eval"]["accuracy"])
    assert all(unit(row["mc_ece"]) and unit(row["mean_agreement"]) for row in rotation + noise)
    assert rotation[6]["eval_accuracy"] < rotation[0]["eval_accuracy"]  # 90 degrees hurts

    sets = r["ood"]["sets"]
    assert set(sets) == {"digits", "digits_full_frame", "uniform_noise", "inverted"}
    assert sets["digits"]["examples"] == 200
    for res in sets.values():
        for key in (*SCORES, "eval_max_probability"):
            assert unit(res[key]["auroc"])
            assert unit(res[key]["fpr_at_95_tpr"])

    t = r["temperature"]
    assert (t["temperature_eval"], t["temperature_mc"]) == (1.5, 1.25)
    # A temperature rescales the logits: it never changes a prediction.
    assert t["eval_after"]["accuracy"] == t["eval_before"]["accuracy"]
    # The same seeded passes as the in-distribution MC numbers, as logits.
    assert t["mc_before"]["accuracy"] == ind["mc"]["10"]["accuracy"]
    assert t["mc_before"]["nll"] == pytest.approx(ind["mc"]["10"]["nll"], rel=1e-4)
    assert t["eval_before"]["nll"] == pytest.approx(ind["eval"]["nll"], rel=1e-4)
    md = (folder / "report.md").read_text()
    for heading in (
        "## In distribution",
        "## Temperature scaling",
        "## Error detection",
        "## Dataset shift",
        "## Out of distribution",
    ):
        assert heading in md


def test_no_temperature_section_without_calibration(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(checkpoint)
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, ckpt.model, ckpt.labels, {})
    cfg = ReportConfig(bare, limit=10, samples=(3,))
    split = Split(torch.rand(10, 784), torch.zeros(10, dtype=torch.int64))
    loaded = load_checkpoint(bare)
    assert temperature_section(loaded, Engine(loaded.model), cfg, split, tmp_path) is None


def test_report_config_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="samples"):
        ReportConfig(tmp_path / "m.safetensors", samples=(10, 0))
    with pytest.raises(ValueError, match="limit"):
        ReportConfig(tmp_path / "m.safetensors", limit=0)
    cfg = ReportConfig(tmp_path / "m.safetensors", samples=(10, 30))
    assert cfg.folder == tmp_path / "m.report"
    assert cfg.reference_samples == 30


def test_rotation_and_noise_transforms() -> None:
    X = torch.rand(3, 784, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rotate(X, 0), X)
    flipped = X.reshape(3, 28, 28).flip(-1, -2).reshape(3, 784)
    torch.testing.assert_close(rotate(X, 180), flipped, atol=1e-5, rtol=0)
    noisy = add_noise(X, 0.5, seed=1)
    assert noisy.min() >= 0
    assert noisy.max() <= 1
    torch.testing.assert_close(noisy, add_noise(X, 0.5, seed=1))
    assert not torch.equal(noisy, X)


def test_digits_are_light_on_dark_in_the_unit_range() -> None:
    digits = digits_28x28(box=28)
    assert digits.shape == (1797, 784)
    assert digits.min() >= 0
    assert digits.max() <= 1
    images = digits.reshape(-1, 28, 28)
    assert images[:, :, :2].mean() < 0.05  # dark background at the left edge
    assert images[:, 8:20, 8:20].mean() > 0.2  # ink in the middle
    assert math.isclose(float(digits.max()), 1.0, abs_tol=0.01)
    framed = digits_28x28().reshape(-1, 28, 28)
    assert framed[:, :4].abs().max() == 0  # 4 empty rows and columns around a 20x20 digit
    assert framed[:, :, 24:].abs().max() == 0
    torch.testing.assert_close(
        framed.sum((1, 2)) / 400, images.sum((1, 2)) / 784, atol=0.02, rtol=0
    )


def test_training_cli_loads_without_the_report_extras() -> None:
    """scikit-learn and matplotlib (the "report" extra) load only when a report or plot needs
    them, so `python -m training train` runs without them."""
    code = (
        "import sys, training.__main__, training.experiments; "
        "print(sorted(m for m in ('sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
