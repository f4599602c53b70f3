import hashlib
import json
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save

from models.checkpoint import (
    CheckpointError,
    _content_sha256,
    load_checkpoint,
    save_checkpoint,
    weights_of,
)
from models.cnn import DropoutCNN
from models.mlp import (
    DropoutMLP,
    DropoutMLPConcise,
    DropoutMLPScratch,
    MLPConfig,
    Variant,
    build_model,
)
from tests.helpers import TINY_CNN, tiny_cnn

CONFIG = MLPConfig(hidden=(16, 8), dropout=(0.5, 0.2))
LABELS = tuple(f"class-{i}" for i in range(10))
META: dict[str, Any] = {
    "created_at": "2026-01-01T00:00:00+00:00",
    "metrics": {"test_accuracy": 0.875},
    "preprocessing": {"scale": 1 / 255},
}

Tensors = dict[str, torch.Tensor]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # A distinctive parent, so that a leaked directory path in a message is easy to spot.
    return tmp_path / "private-parent-dir"


def make_model(variant: Variant = "scratch", seed: int = 0) -> DropoutMLP:
    torch.manual_seed(seed)
    return build_model(replace(CONFIG, variant=variant))


def valid_tensors() -> Tensors:
    return {k: v.detach().clone() for k, v in weights_of(make_model()).items()}


def valid_meta() -> dict[str, Any]:
    return {**META, "config": CONFIG.to_dict(), "labels": list(LABELS)}


def header(
    tensors: Tensors, meta: dict[str, Any] | str, *, kind: str = "model", **fields: str
) -> dict[str, str]:
    """The header models/checkpoint.py writes, with a valid content hash unless overridden."""
    meta_json = meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True)
    out = {
        "format": "mcdropout",
        "format_version": "1",
        "kind": kind,
        "metadata": meta_json,
        "content_sha256": _content_sha256(kind, meta_json, tensors),
    }
    return {**out, **fields}


def write(path: Path, tensors: Tensors, head: dict[str, str] | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(st_save(tensors, metadata=head))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path.name in message
    assert str(path.parent) not in message
    assert path.parent.name not in message
    return message


@pytest.mark.parametrize("variant", ["scratch", "concise"])
def test_round_trip(folder: Path, variant: Variant) -> None:
    model = make_model(variant)
    path = folder / "m.safetensors"
    sha = save_checkpoint(path, model, LABELS, META)
    ck = load_checkpoint(path)
    assert type(ck.model) is {"scratch": DropoutMLPScratch, "concise": DropoutMLPConcise}[variant]
    assert ck.config == model.config
    assert ck.labels == LABELS
    assert ck.metadata == {**valid_meta(), "config": model.config.to_dict()}
    assert sha == ck.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ck.version == sha[:12]
    assert not ck.model.training
    for (k, a), (_, b) in zip(weights_of(model).items(), weights_of(ck.model).items(), strict=True):
        assert torch.equal(a, b), k
    X = torch.rand(4, 784)
    with torch.no_grad():
        assert torch.equal(ck.model(X), model.eval()(X))


def test_cnn_round_trips_bit_for_bit(folder: Path) -> None:
    model = tiny_cnn()
    path = folder / "c.safetensors"
    sha = save_checkpoint(path, model, LABELS, META)
    ck = load_checkpoint(path)
    assert type(ck.model) is DropoutCNN
    assert ck.config == TINY_CNN
    assert ck.metadata["config"]["kind"] == "cnn"
    assert ck.sha256 == sha
    assert not ck.model.training
    saved, loaded = weights_of(model), weights_of(ck.model)
    assert list(loaded) == list(saved)
    assert "features.1.0.bn.running_var" in loaded
    assert not any("num_batches_tracked" in k for k in loaded)
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k
    X = torch.rand(4, 784)
    with torch.no_grad():
        assert torch.equal(ck.model(X), model(X))


def test_mlp_tensor_names_stay_those_of_existing_checkpoints() -> None:
    names = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    names += ["layers.2.weight", "layers.2.bias"]
    variants: tuple[Variant, ...] = ("scratch", "concise")
    for variant in variants:
        assert list(weights_of(make_model(variant))) == names


def test_mlp_checkpoint_without_a_kind_loads(folder: Path) -> None:
    """A checkpoint written before configs had a kind: its config is an MLP's."""
    t = valid_tensors()
    old_config = {k: v for k, v in CONFIG.to_dict().items() if k != "kind"}
    path = write(folder / "old.safetensors", t, header(t, {**valid_meta(), "config": old_config}))
    ck = load_checkpoint(path)
    assert ck.config == CONFIG
    X = torch.rand(3, 784)
    with torch.no_grad():
        assert torch.equal(ck.model(X), make_model().eval()(X))


def test_unknown_kind_is_refused(folder: Path) -> None:
    t = valid_tensors()
    meta = {**valid_meta(), "config": {**CONFIG.to_dict(), "kind": "transformer"}}
    path = write(folder / "bad.safetensors", t, header(t, meta))
    message = load_error(path)
    assert "unknown architecture kind 'transformer' (this build knows mlp, cnn)" in message


def test_overwrite_is_atomic_and_leaves_no_temp_file(folder: Path) -> None:
    path = folder / "m.safetensors"
    save_checkpoint(path, make_model(seed=1), LABELS, META)
    save_checkpoint(path, make_model(seed=2), LABELS, META)
    assert os.listdir(folder) == ["m.safetensors"]
    loaded = weights_of(load_checkpoint(path).model)
    for k, v in weights_of(make_model(seed=2)).items():
        assert torch.equal(loaded[k], v), k


def test_failed_write_keeps_the_old_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder / "m.safetensors"
    save_checkpoint(path, make_model(seed=1), LABELS, META)
    old = path.read_bytes()

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the final rename fails
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_model(seed=2), LABELS, META)
    assert path.read_bytes() == old
    assert os.listdir(folder) == ["m.safetensors"]


def test_written_file_honours_the_umask(folder: Path) -> None:
    # A checkpoint is read by the service, often as another user (a non-root container). The
    # temp file from mkstemp is 0600; the result should get the mode an ordinary write gives.
    umask = os.umask(0o022)
    os.umask(umask)
    path = folder / "m.safetensors"
    save_checkpoint(path, make_model(), LABELS, META)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_wrong_label_count_is_refused_on_save(folder: Path) -> None:
    with pytest.raises(ValueError, match="3 labels for 10 outputs"):
        save_checkpoint(folder / "m.safetensors", make_model(), ["a", "b", "c"], META)


def _drop(t: Tensors) -> Tensors:
    return {k: v for k, v in t.items() if k != "layers.2.bias"}


def _retype(t: Tensors) -> Tensors:
    return {**t, "layers.1.weight": t["layers.1.weight"].double()}


def _nan(t: Tensors) -> Tensors:
    w = t["layers.0.weight"].clone()
    w[3, 5] = float("nan")
    return {**t, "layers.0.weight": w}


def _inf(t: Tensors) -> Tensors:
    return {**t, "layers.2.bias": torch.full((10,), float("inf"))}


# Each tensor edit comes with a valid content hash, so that the named check is the one that fires.
TENSOR_EDITS: list[tuple[Callable[[Tensors], Tensors], str]] = [
    (_drop, "missing tensors: layers.2.bias"),
    (lambda t: {**t, "layers.3.weight": torch.zeros(2, 2)}, "unexpected tensors: layers.3.weight"),
    (
        lambda t: {**t, "layers.0.weight": torch.zeros(16, 783)},
        "tensor layers.0.weight has shape [16, 783], expected [16, 784]",
    ),
    (_retype, "tensor layers.1.weight has dtype torch.float64, expected float32"),
    (_nan, "tensor layers.0.weight holds NaN or infinite values"),
    (_inf, "tensor layers.2.bias holds NaN or infinite values"),
]


@pytest.mark.parametrize(("edit", "message"), TENSOR_EDITS)
def test_bad_tensors(folder: Path, edit: Callable[[Tensors], Tensors], message: str) -> None:
    tensors = edit(valid_tensors())
    path = write(folder / "bad.safetensors", tensors, header(tensors, valid_meta()))
    assert message in load_error(path)


def cnn_tensors() -> Tensors:
    return {k: v.detach().contiguous() for k, v in weights_of(tiny_cnn()).items()}


def _negative_variance(t: Tensors) -> Tensors:
    var = t["features.0.0.bn.running_var"].clone()
    var[2] = -0.5
    return {**t, "features.0.0.bn.running_var": var}


CNN_EDITS: list[tuple[Callable[[Tensors], Tensors], str]] = [
    (
        lambda t: {k: v for k, v in t.items() if k != "features.1.0.bn.running_var"},
        "missing tensors: features.1.0.bn.running_var",
    ),
    (
        lambda t: {**t, "features.1.1.bn.running_mean": torch.zeros(8)},
        "unexpected tensors: features.1.1.bn.running_mean",
    ),
    (
        lambda t: {**t, "features.0.0.bn.num_batches_tracked": torch.tensor(3)},
        "unexpected tensors: features.0.0.bn.num_batches_tracked",
    ),
    (
        lambda t: {**t, "features.0.0.bn.running_mean": torch.zeros(5)},
        "tensor features.0.0.bn.running_mean has shape [5], expected [4]",
    ),
    (
        lambda t: {**t, "features.1.0.conv.weight": torch.zeros(8, 4, 5, 5)},
        "tensor features.1.0.conv.weight has shape [8, 4, 5, 5], expected [8, 4, 3, 3]",
    ),
    (
        lambda t: {**t, "features.0.0.bn.weight": t["features.0.0.bn.weight"].half()},
        "tensor features.0.0.bn.weight has dtype torch.float16, expected float32",
    ),
    (
        lambda t: {**t, "features.1.0.bn.bias": torch.full((8,), float("nan"))},
        "tensor features.1.0.bn.bias holds NaN or infinite values",
    ),
    (_negative_variance, "tensor features.0.0.bn.running_var holds negative variances"),
]


@pytest.mark.parametrize(("edit", "message"), CNN_EDITS)
def test_bad_cnn_tensors(folder: Path, edit: Callable[[Tensors], Tensors], message: str) -> None:
    tensors = edit(cnn_tensors())
    meta = {**META, "config": TINY_CNN.to_dict(), "labels": list(LABELS)}
    path = write(folder / "bad.safetensors", tensors, header(tensors, meta))
    assert message in load_error(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format_version": "2"}, "unknown format version '2' (this build reads version 1)"),
        ({"kind": "optimizer"}, "holds a 'optimizer', expected a 'model'"),
        ({"format": "other"}, "not a mcdropout checkpoint"),
    ],
)
def test_bad_header_fields(folder: Path, fields: dict[str, str], message: str) -> None:
    t = valid_tensors()
    path = write(folder / "bad.safetensors", t, header(t, valid_meta(), **fields))
    assert message in load_error(path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({**META, "labels": list(LABELS)}, "invalid architecture metadata ('config')"),
        ({**valid_meta(), "labels": ["a", "b"]}, "2 labels for 10 outputs"),
        (
            {**valid_meta(), "config": {**CONFIG.to_dict(), "variant": "big"}},
            "invalid architecture metadata",
        ),
        ("not json", "metadata is not valid JSON"),
        ("[1, 2]", "metadata must be a JSON object"),
    ],
)
def test_bad_metadata(folder: Path, meta: dict[str, Any] | str, message: str) -> None:
    t = valid_tensors()
    path = write(folder / "bad.safetensors", t, header(t, meta))
    assert message in load_error(path)


def test_no_metadata(folder: Path) -> None:
    path = write(folder / "bare.safetensors", valid_tensors(), None)
    assert "no checkpoint metadata" in load_error(path)


def _saved(folder: Path) -> Path:
    path = folder / "m.safetensors"
    save_checkpoint(path, make_model(), LABELS, META)
    return path


def test_flipped_tensor_byte_is_caught(folder: Path) -> None:
    path = _saved(folder)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    assert "content SHA-256 mismatch" in load_error(path)


def test_edited_metadata_is_caught(folder: Path) -> None:
    t = valid_tensors()
    good = header(t, valid_meta())
    edited = {
        **good,
        "metadata": json.dumps({**valid_meta(), "labels": ["x"] * 10}, sort_keys=True),
    }
    path = write(folder / "m.safetensors", t, edited)
    assert "content SHA-256 mismatch" in load_error(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: b"", "not a safetensors file (too short)"),
        (lambda d: d[:5], "not a safetensors file (too short)"),
        (lambda d: d[:60], "not a safetensors file (header length out of range)"),
        (lambda d: d[:-100], "malformed safetensors data"),
        (lambda d: random.Random(0).randbytes(4096), "not a safetensors file"),
        (lambda d: (16).to_bytes(8, "little") + b"\xff" * 16 + d[24:], "unreadable header"),
    ],
)
def test_not_a_safetensors_file(folder: Path, make: Callable[[bytes], bytes], message: str) -> None:
    path = _saved(folder)
    path.write_bytes(make(path.read_bytes()))
    assert message in load_error(path)


def test_missing_file(folder: Path) -> None:
    folder.mkdir()
    assert "cannot read" in load_error(folder / "absent.safetensors")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickle_payload_is_never_unpickled(folder: Path, zipfile: bool) -> None:
    folder.mkdir()
    control, marker = folder / "control", folder / "marker"
    action, args = Payload(control).__reduce__()
    action(*args)
    assert control.exists()  # what unpickling the payload would run does run
    path = folder / "evil.safetensors"
    torch.save(Payload(marker), path, _use_new_zipfile_serialization=zipfile)
    load_error(path)
    # The one loader of pickles the design allows refuses it as well.
    pt = folder / "evil.pt"
    pt.write_bytes(path.read_bytes())
    with pytest.raises(pickle.UnpicklingError):
        torch.load(pt, weights_only=True)
    assert not marker.exists()
