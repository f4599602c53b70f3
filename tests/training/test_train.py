import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, weights_of
from models.mlp import DropoutMLP
from tests.helpers import blobs
from training import __main__ as cli
from training.train import State, TrainConfig, fit, save_state, state_path


def config(tmp_path: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "out": tmp_path / "m.safetensors",
        "hidden": (32, 32),
        "batch_size": 64,
        "epochs": 3,
        "progress": False,
    }
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def saver(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    def on_epoch(
        model: DropoutMLP, opt: torch.optim.Optimizer, shuffle: torch.Generator, st: State
    ) -> None:
        save_state(state_path(cfg.out), cfg, model, opt, shuffle, st)

    return on_epoch


def test_loss_falls_on_a_small_subset(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=4)
    _, state = fit(cfg, blobs(1024, 1), blobs(256, 2), lambda *_: None)
    losses = [h["train_loss"] for h in state.history]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.6 * losses[0]
    assert state.history[-1]["val_accuracy"] > 0.8  # chance is 0.1


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_continues_exactly_where_it_stopped(tmp_path: Path, schedule: str) -> None:
    train, val = blobs(512, 1), blobs(128, 2)
    opts: dict[str, object] = {"momentum": 0.9, "schedule": schedule}
    straight, _ = fit(config(tmp_path / "a", resume=False, **opts), train, val, lambda *_: None)

    # "Interrupted" after epoch 1: the state on disk is all that survives. (Epoch 1's cosine
    # rate is lr whatever the length of the run.)
    first = config(tmp_path / "b", epochs=1, **opts)
    fit(first, train, val, saver(first))
    torch.manual_seed(1234)  # whatever the process did since must not matter
    resumed_cfg = config(tmp_path / "b", **opts)
    resumed, state = fit(resumed_cfg, train, val, lambda *_: None)

    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    for (name, a), b in zip(
        weights_of(straight).items(), weights_of(resumed).values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    first = config(tmp_path, epochs=1)
    fit(first, blobs(128, 1), blobs(64, 2), saver(first))
    with pytest.raises(CheckpointError, match="other settings; pass --no-resume"):
        fit(config(tmp_path, lr=0.2), blobs(128, 1), blobs(64, 2), lambda *_: None)


def test_cli_dry_run_then_evaluate_on_real_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dry.safetensors"
    assert cli.main(["train", "--dry-run", "--no-progress", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.config.sizes == (784, 256, 256, 10)
    assert ckpt.metadata["metrics"]["epochs"] == 1
    assert ckpt.metadata["provenance"]["train_examples"] == 2048
    assert ckpt.metadata["provenance"]["val_examples"] == 5000
    assert len(ckpt.metadata["provenance"]["data_sha256"]) == 4
    assert ckpt.metadata["metrics"]["test_accuracy"] > 0.25  # 8 SGD steps; chance is 0.1
    history = json.loads((tmp_path / "dry.history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert not state_path(out).exists()  # a finished run leaves no resume state

    cal = ckpt.metadata["calibration"]
    assert cal["samples"] == 10
    assert cal["temperature_eval"] > 0
    assert cal["temperature_mc"] > 0
    assert cal["nll_val_mc"][1] <= cal["nll_val_mc"][0]  # the fit never makes NLL worse
    assert 0 < cal["coverage_val"] <= 1
    assert 0 < cal["coverage_test"] <= 1
    assert cal["target_reached"] == (cal["selective_accuracy_val"] >= 0.99)

    capsys.readouterr()
    args = ["calibrate", str(out), "--calibration-samples", "10", "--target-accuracy", "0.6"]
    assert cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    again = load_checkpoint(out)
    assert again.metadata["calibration"] == printed
    assert printed["target_selective_accuracy"] == 0.6
    assert printed["coverage_val"] >= cal["coverage_val"]  # a lower target answers more
    assert again.metadata["metrics"] == ckpt.metadata["metrics"]
    for a, b in zip(weights_of(ckpt.model).values(), weights_of(again.model).values(), strict=True):
        assert torch.equal(a, b)

    assert cli.main(["evaluate", str(out), "--samples", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 10000
    assert result["eval_accuracy"] == pytest.approx(ckpt.metadata["metrics"]["test_accuracy"])
    assert result["mc_wrong"] == round((1 - result["mc_accuracy"]) * 10000)
    assert result["mean_agreement_wrong"] < result["mean_agreement_right"]


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    assert cli.main(["evaluate", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: bad.safetensors: ")
    assert cli.main(["train", "--epochs", "0", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err


def test_cosine_schedule_decays_each_epoch_to_zero() -> None:
    cfg = TrainConfig(lr=0.1, epochs=4, schedule="cosine")
    assert [round(cfg.lr_at(e), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]
    assert TrainConfig(lr=0.1, epochs=4, schedule="constant").lr_at(3) == 0.1
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        TrainConfig(schedule="linear")
