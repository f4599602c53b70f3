"""Checkpoints: one safetensors file whose header carries JSON metadata and a content SHA-256.

The content hash covers the metadata and every tensor (name, dtype, shape, bytes), so any edit
after writing is caught; the file's own SHA-256 is what a model card shows. Nothing is unpickled.
"""

import hashlib
import json
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.cnn import DropoutCNN
from models.networks import Config, Network, build_model, config_from_dict

FORMAT = "mcdropout"
FORMAT_VERSION = "1"
MODEL_KIND = "model"


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted; the message says why (never with a full path)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would force 0600 on the final file).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _content_sha256(kind: str, meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}/{FORMAT_VERSION}/{kind}\0".encode())
    h.update(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(
    path: Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> str:
    """Atomically write a verified tensors file; returns the file's SHA-256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(meta, sort_keys=True)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "metadata": meta_json,
        "content_sha256": _content_sha256(kind, meta_json, tensors),
    }
    data = st_save(tensors, metadata=header)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _read_header(data: bytes, name: str) -> dict[str, str]:
    if len(data) < 8:
        raise CheckpointError(f"{name}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{name}: not a safetensors file (header length out of range)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{name}: not a safetensors file (unreadable header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{name}: no checkpoint metadata in the safetensors header")
    return meta


def load_tensors(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read and verify a file written by save_tensors: (tensors, metadata, file SHA-256)."""
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read ({e.strerror})") from None
    header = _read_header(data, name)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a {FORMAT} checkpoint")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: unknown format version {header.get('format_version')!r} "
            f"(this build reads version {FORMAT_VERSION})"
        )
    if header.get("kind") != kind:
        raise CheckpointError(f"{name}: holds a {header.get('kind')!r}, expected a {kind!r}")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for malformed bytes
        raise CheckpointError(f"{name}: malformed safetensors data ({e})") from None
    meta_json = header.get("metadata", "")
    if _content_sha256(kind, meta_json, tensors) != header.get("content_sha256"):
        raise CheckpointError(
            f"{name}: content SHA-256 mismatch: the file was modified after it was written"
        )
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError:
        raise CheckpointError(f"{name}: metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{name}: metadata must be a JSON object")
    return tensors, meta, hashlib.sha256(data).hexdigest()


def weights_of(model: Network) -> dict[str, torch.Tensor]:
    """Every tensor the network's outputs depend on, by a name independent of the module tree:
    the dense layers as layers.{i}.weight / layers.{i}.bias (the MLP's only tensors, the same
    for both forms), and a CNN's conv unit c of block b as features.{b}.{c}.conv.weight and
    features.{b}.{c}.bn.{weight,bias,running_mean,running_var} (BatchNorm's batch counter is
    left out: with a fixed momentum nothing reads it)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(model, DropoutCNN):
        for b, block in enumerate(model.units):
            for c, unit in enumerate(block):
                out[f"features.{b}.{c}.conv.weight"] = unit.conv.weight
                for name in ("weight", "bias", "running_mean", "running_var"):
                    out[f"features.{b}.{c}.bn.{name}"] = getattr(unit.bn, name)
    for i, linear in enumerate(model.layers()):
        out[f"layers.{i}.weight"] = linear.weight
        out[f"layers.{i}.bias"] = linear.bias
    return out


@dataclass(frozen=True)
class Checkpoint:
    model: Network
    labels: tuple[str, ...]
    metadata: dict[str, Any]  # preprocessing, metrics, provenance, created_at, ...
    sha256: str  # of the whole file, as sha256sum prints it

    @property
    def config(self) -> Config:
        return self.model.config

    @property
    def version(self) -> str:
        return self.sha256[:12]


def save_checkpoint(
    path: Path, model: Network, labels: tuple[str, ...] | list[str], meta: dict[str, Any]
) -> str:
    if len(labels) != model.config.num_outputs:
        raise ValueError(f"{len(labels)} labels for {model.config.num_outputs} outputs")
    meta = {**meta, "config": model.config.to_dict(), "labels": list(labels)}
    return save_tensors(path, MODEL_KIND, weights_of(model), meta)


def model_from_tensors(tensors: dict[str, torch.Tensor], config: Config, name: str) -> Network:
    """Build the network and copy the weights in, strictly: keys, shapes, dtypes, finite values,
    and BatchNorm running variances that are not negative."""
    model = build_model(config)
    expected = {k: v.shape for k, v in weights_of(model).items()}
    missing = sorted(expected.keys() - tensors.keys())
    extra = sorted(tensors.keys() - expected.keys())
    if missing:
        raise CheckpointError(f"{name}: missing tensors: {', '.join(missing)}")
    if extra:
        raise CheckpointError(f"{name}: unexpected tensors: {', '.join(extra)}")
    for key, shape in expected.items():
        t = tensors[key]
        if t.shape != shape:
            raise CheckpointError(
                f"{name}: tensor {key} has shape {list(t.shape)}, expected {list(shape)}"
            )
        if t.dtype != torch.float32:
            raise CheckpointError(f"{name}: tensor {key} has dtype {t.dtype}, expected float32")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{name}: tensor {key} holds NaN or infinite values")
        if key.endswith(".running_var") and (t < 0).any():
            raise CheckpointError(f"{name}: tensor {key} holds negative variances")
    with torch.no_grad():
        for key, param in weights_of(model).items():
            param.copy_(tensors[key])
    return model


def load_checkpoint(path: Path) -> Checkpoint:
    tensors, meta, sha = load_tensors(path, MODEL_KIND)
    try:
        config = config_from_dict(meta["config"])
        labels = tuple(str(x) for x in meta["labels"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name}: invalid architecture metadata ({e})") from None
    if len(labels) != config.num_outputs:
        raise CheckpointError(f"{path.name}: {len(labels)} labels for {config.num_outputs} outputs")
    model = model_from_tensors(tensors, config, path.name)
    model.eval()
    return Checkpoint(model=model, labels=labels, metadata=meta, sha256=sha)
