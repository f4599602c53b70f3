import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, weights_of
from models.cnn import CNNConfig, DropoutCNN
from models.mlp import MLPConfig
from models.networks import KINDS, Network
from tests.helpers import blobs
from training import __main__ as cli
from training.train import RECIPES, State, TrainConfig, fit, run, save_state, state_path

# A small CNN for the tests: the blobs' 784 features are its 1x28x28 images.
CNN: dict[str, object] = {"arch": "cnn", "channels": (4, 8), "hidden": (16,), "dropout": (0.5,)}


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
        model: Network, opt: torch.optim.Optimizer, shuffle: torch.Generator, st: State
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


@pytest.mark.parametrize(
    "arch_opts",
    [
        {"schedule": "constant"},
        {"schedule": "cosine"},
        # BatchNorm's running statistics and Nesterov's momentum buffers are resumed too.
        {"schedule": "cosine", "nesterov": True, "weight_decay": 5e-4, **CNN},
    ],
    ids=["mlp-constant", "mlp-cosine", "cnn"],
)
def test_resume_continues_exactly_where_it_stopped(
    tmp_path: Path, arch_opts: dict[str, object]
) -> None:
    train, val = blobs(512, 1), blobs(128, 2)
    opts: dict[str, object] = {"momentum": 0.9, **arch_opts}
    straight, _ = fit(config(tmp_path / "a", resume=False, **opts), train, val, lambda *_: None)

    # "Interrupted" after epoch 1: the state on disk is all that survives. (Epoch 1's cosine
    # rate is lr whatever the length of the run.)
    first = config(tmp_path / "b", epochs=1, **opts)
    fit(first, train, val, saver(first))
    torch.manual_seed(1234)  # whatever the process did since must not matter
    resumed_cfg = config(tmp_path / "b", **opts)
    resumed, state = fit(resumed_cfg, train, val, lambda *_: None)

    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    assert type(resumed) is type(straight)
    for (name, a), b in zip(
        weights_of(straight).items(), weights_of(resumed).values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("first", "other"),
    [
        ({}, {"lr": 0.2}),
        ({}, CNN),
        (CNN, {**CNN, "channels": (4, 16)}),
        (CNN, {**CNN, "convs_per_block": 3}),
    ],
    ids=["lr", "arch", "channels", "convs-per-block"],
)
def test_resume_refuses_other_settings(
    tmp_path: Path, first: dict[str, object], other: dict[str, object]
) -> None:
    cfg = config(tmp_path, epochs=1, **first)
    fit(cfg, blobs(128, 1), blobs(64, 2), saver(cfg))
    with pytest.raises(CheckpointError, match="other settings; pass --no-resume"):
        fit(config(tmp_path, **other), blobs(128, 1), blobs(64, 2), lambda *_: None)


def test_identity_holds_the_fields_of_its_own_arch() -> None:
    mlp, cnn = TrainConfig().identity(), TrainConfig(**CNN).identity()  # type: ignore[arg-type]
    assert (mlp["arch"], mlp["variant"]) == ("mlp", "scratch")
    assert not {"channels", "convs_per_block"} & mlp.keys()
    assert (cnn["arch"], cnn["channels"], cnn["convs_per_block"]) == ("cnn", [4, 8], 2)
    assert "variant" not in cnn


def test_recipes_cover_every_architecture_and_flags_override_them() -> None:
    assert tuple(RECIPES) == KINDS
    assert TrainConfig() == TrainConfig.for_arch("mlp")
    cnn = TrainConfig.for_arch("cnn")
    assert (cnn.epochs, cnn.batch_size, cnn.lr, cnn.weight_decay) == (10, 128, 0.05, 5e-4)
    assert cnn.nesterov
    assert cnn.out.name == "fashion-cnn.safetensors"
    expected = CNNConfig(channels=(32, 64), convs_per_block=2, hidden=(256,), dropout=(0.5,))
    assert cnn.model_config() == expected
    assert TrainConfig().model_config() == MLPConfig(hidden=(256, 256), dropout=(0.2, 0.5))

    def parsed(*argv: str) -> TrainConfig:
        return cli.train_config(cli.parser().parse_args(["train", *argv]))

    assert parsed() == parsed("--arch", "cnn") == cnn  # the CLI's default network
    assert parsed("--arch", "mlp") == TrainConfig()
    custom = parsed("--arch", "cnn", "--channels", "16,32,64", "--convs-per-block", "2")
    assert custom == TrainConfig.for_arch("cnn", channels=(16, 32, 64), convs_per_block=2)
    assert parsed("--arch", "cnn", "--lr", "0.1", "--nesterov").lr == 0.1
    assert parsed("--arch", "cnn", "--nesterov").nesterov
    with pytest.raises(
        ValueError, match="--channels is a setting of --arch cnn, not of --arch mlp"
    ):
        parsed("--arch", "mlp", "--channels", "8")
    with pytest.raises(ValueError, match="--variant is a setting of --arch mlp, not of --arch cnn"):
        parsed("--arch", "cnn", "--variant", "concise")
    with pytest.raises(ValueError, match="height and width must be at least 32, got 28x28"):
        parsed("--arch", "cnn", "--channels", "8,8,8,8,8")
    with pytest.raises(ValueError, match="nesterov momentum needs a momentum above 0"):
        parsed("--arch", "mlp", "--momentum", "0", "--nesterov")


def test_cnn_run_writes_a_checkpoint_with_its_input_shape(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=2, limit=1024, batch_size=128, **CNN)
    out = run(cfg)
    ckpt = load_checkpoint(out)
    assert isinstance(ckpt.model, DropoutCNN)
    assert ckpt.config == cfg.model_config()
    assert ckpt.metadata["preprocessing"]["input_shape"] == [1, 28, 28]
    assert ckpt.metadata["preprocessing"]["flattened"] == 784
    assert ckpt.metadata["training"]["arch"] == "cnn"
    assert ckpt.metadata["training"]["channels"] == [4, 8]
    assert ckpt.metadata["metrics"]["test_accuracy"] > 0.25  # 16 SGD steps; chance is 0.1
    assert not state_path(out).exists()


def test_cli_dry_run_then_evaluate_on_real_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dry.safetensors"
    argv = ["train", "--arch", "mlp", "--dry-run", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
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


def test_cli_dry_run_of_the_cnn_calibrates_and_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cnn.safetensors"
    argv = ["train", "--arch", "cnn", "--channels", "6,12", "--dry-run", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.config == CNNConfig(
        channels=(6, 12), convs_per_block=2, hidden=(256,), dropout=(0.5,)
    )
    assert ckpt.metadata["training"]["weight_decay"] == 5e-4  # the cnn recipe's
    assert ckpt.metadata["calibration"]["samples"] == 10
    assert ckpt.metadata["metrics"]["test_accuracy"] > 0.25  # 16 SGD steps; chance is 0.1
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--samples", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval_accuracy"] == pytest.approx(ckpt.metadata["metrics"]["test_accuracy"])
