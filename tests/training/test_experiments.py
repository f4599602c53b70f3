import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from models.mlp import MLPConfig, build_model
from training import __main__ as cli
from training import experiments
from training.experiments.exercises import layer_variances
from training.variants import NoisyMLP, bernoulli_mask, gaussian_multiplier, mc_stats


def test_quick_experiment_writes_its_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "gaussian"
    assert cli.main(["experiment", "gaussian-noise", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["quick"] is True
    assert result["settings"]["epochs"] == 1
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"dropout", "gaussian", "none"}
    for kind in ("dropout", "gaussian"):
        r = rows[kind]
        for key in ("eval_accuracy", "mc_accuracy", "mc_ece", "mc_error_auroc_max_probability"):
            assert 0.0 <= r[key] <= 1.0, (kind, key)
        assert r["mc_accuracy"] > 0.1  # above chance after one epoch on 1,024 images
    assert rows["none"]["mc_accuracy"] is None  # no noise, no MC distribution
    assert 0.0 <= rows["none"]["eval_accuracy"] <= 1.0
    md = (out / "results.md").read_text()
    assert "| gaussian |" in md
    assert f"experiment gaussian-noise --out {out} --quick" in md
    assert (out / "comparison.png").stat().st_size > 0


def test_unknown_experiment_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.run("nope")
    with pytest.raises(SystemExit):
        cli.main(["experiment", "nope"])


def test_noise_has_the_mean_and_variance_of_dropout() -> None:
    g = torch.Generator().manual_seed(0)
    n = 200_000  # standard error of the variance (1 here): about sqrt(2/n) ~ 0.003 for gaussian
    for p in (0.2, 0.5):
        target = p / (1 - p)
        for draw in (bernoulli_mask, gaussian_multiplier):
            m = draw(torch.Size([n]), p, g)
            assert float(m.mean()) == pytest.approx(1.0, abs=0.02)
            assert float(m.var()) == pytest.approx(target, rel=0.03)


def test_noisy_mlp_modes() -> None:
    torch.manual_seed(0)
    X = torch.rand(8, 784)
    for kind in ("dropout", "dropconnect", "gaussian"):
        model = NoisyMLP(kind, (0.5, 0.5)).eval()
        clean = model(X)
        # Noise off: the plain network.
        linears = list(model.linears)
        H = F.relu(linears[1](F.relu(linears[0](X))))
        torch.testing.assert_close(clean, linears[2](H))
        a = model(X, stochastic=True, generator=torch.Generator().manual_seed(1))
        b = model(X, stochastic=True, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)  # seeded
        assert not torch.allclose(a, clean)
        stats = mc_stats(model, X, samples=20, seed=3, batch=3)  # blocks of 3 inputs
        torch.testing.assert_close(stats.votes.sum(1), torch.full((8,), 20))
        torch.testing.assert_close(
            stats.mean_probabilities, mc_stats(model, X, 20, seed=3, batch=3).mean_probabilities
        )
    with pytest.raises(ValueError, match="kind"):
        NoisyMLP("spike", (0.5, 0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no MC"):
        mc_stats(NoisyMLP("none", (0.0, 0.0)), X, 5, 0)


def test_layer_variances_with_and_without_noise() -> None:
    X = torch.rand(256, 784, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = layer_variances(build_model(MLPConfig(dropout=(0.0, 0.0))), X, seed=0)
    assert plain[0] == plain[1]  # p = 0: the noisy pass is the clean one
    assert plain[2] == plain[3]
    torch.manual_seed(0)
    noisy = layer_variances(build_model(MLPConfig(dropout=(0.5, 0.5))), X, seed=0)
    assert noisy[0] == pytest.approx(plain[0])  # same weights, noise off
    assert noisy[1] > 2 * noisy[0]  # a p = 0.5 mask more than doubles the variance
