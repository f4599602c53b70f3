"""The training loop (d2l.ai defaults), with per-epoch validation, history and resume."""

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tqdm
from torch import nn
from torch.nn import functional as F

from models.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_tensors,
    model_from_tensors,
    save_checkpoint,
    save_tensors,
    weights_of,
)
from models.cnn import CNNConfig
from models.mlp import MLPConfig, Variant
from models.networks import Config, Network, build_model
from training.data import IMAGE_SHAPE, LABELS, VAL_SIZE, Split, load_splits

log = logging.getLogger(__name__)
STATE_KIND = "train-state"
SCHEDULES = ("constant", "cosine")
# The d2l chapter's optimiser (plain SGD at lr 0.1, constant), which the experiments of
# docs/experiments.md use.
CHAPTER_OPTIMIZER: dict[str, Any] = {"lr": 0.1, "momentum": 0.0, "schedule": "constant"}


@dataclass(frozen=True)
class Recipe:
    """An architecture's training defaults: `python -m training train --arch A` takes each
    setting it is not given from RECIPES[A]."""

    out: Path
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    hidden: tuple[int, ...]
    dropout: tuple[float, ...]
    schedule: str


RECIPES: dict[str, Recipe] = {
    # The recommended recipe of docs/experiments.md (issue 3): the chapter's network and batch
    # size, trained longer with momentum and a cosine schedule, lighter dropout after the first
    # hidden layer. The chapter's own optimiser is CHAPTER_OPTIMIZER above.
    "mlp": Recipe(
        out=Path("checkpoints/fashion-mlp.safetensors"),
        epochs=60,
        batch_size=256,
        lr=0.05,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        hidden=(256, 256),
        dropout=(0.2, 0.5),
        schedule="cosine",
    ),
    # CNNConfig's default network (two blocks of 32 and 64 channels, dense 256 with dropout
    # 0.5) with momentum, weight decay and a cosine schedule (docs/training.md).
    "cnn": Recipe(
        out=Path("checkpoints/fashion-cnn.safetensors"),
        epochs=10,
        batch_size=128,
        lr=0.05,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        hidden=(256,),
        dropout=(0.5,),
        schedule="cosine",
    ),
}
# The settings that describe one architecture only; the others' are not part of a run's identity.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "mlp": ("variant",),
    "cnn": ("channels", "convs_per_block"),
}
_MLP = RECIPES["mlp"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the MLP's recipe; TrainConfig.for_arch starts from any
    architecture's."""

    out: Path = _MLP.out
    data_dir: Path | None = None
    epochs: int = _MLP.epochs
    batch_size: int = _MLP.batch_size
    lr: float = _MLP.lr
    momentum: float = _MLP.momentum
    nesterov: bool = _MLP.nesterov
    weight_decay: float = _MLP.weight_decay
    arch: str = "mlp"
    hidden: tuple[int, ...] = _MLP.hidden
    dropout: tuple[float, ...] = _MLP.dropout
    variant: Variant = "scratch"  # the MLP's form
    channels: tuple[int, ...] = CNNConfig.channels  # the CNN's, one entry per conv block
    convs_per_block: int = 2  # the default CNN's (docs/training.md#the-default-model)
    # "constant", or "cosine": lr * (1 + cos(pi * epoch / epochs)) / 2 for each epoch (0-based),
    # a function of the epoch alone, so that a resumed run follows the same schedule.
    schedule: str = _MLP.schedule
    seed: int = 0
    val_size: int = VAL_SIZE
    limit: int | None = None  # train on the first N examples of the training split only
    resume: bool = True
    progress: bool = True

    @classmethod
    def for_arch(cls, arch: str, **settings: Any) -> "TrainConfig":
        """The recipe of `arch` (RECIPES), with `settings` over it."""
        if arch not in RECIPES:
            raise ValueError(f"arch must be one of {', '.join(RECIPES)}, got {arch!r}")
        return cls(arch=arch, **(asdict(RECIPES[arch]) | settings))

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov momentum needs a momentum above 0")
        if self.arch not in RECIPES:
            raise ValueError(f"arch must be one of {', '.join(RECIPES)}, got {self.arch!r}")
        # Lists from JSON become tuples; the architecture's own rules are its config's.
        for name in ("hidden", "dropout", "channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.model_config()

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch `epoch` (0-based)."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr

    def model_config(self) -> Config:
        """The network to train, for the training data's images (IMAGE_SHAPE)."""
        if self.arch == "cnn":
            channels, height, width = IMAGE_SHAPE
            return CNNConfig(
                in_channels=channels,
                height=height,
                width=width,
                channels=self.channels,
                convs_per_block=self.convs_per_block,
                hidden=self.hidden,
                dropout=self.dropout,
            )
        return MLPConfig(
            num_inputs=math.prod(IMAGE_SHAPE),
            hidden=self.hidden,
            dropout=self.dropout,
            variant=self.variant,
        )

    def identity(self) -> dict[str, Any]:
        """What must match for a saved training state to be resumed: every setting but where
        files go, the number of epochs and the display, less other architectures' fields."""
        d = asdict(self)
        for k in ("out", "data_dir", "epochs", "resume", "progress"):
            d.pop(k)
        for arch, fields in ARCH_FIELDS.items():
            for k in fields if arch != self.arch else ():
                d.pop(k)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class State:
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Replica:
    """This process's part in data-parallel training. The base class is the lone process;
    training/distributed.py overrides it for torchrun (DistributedDataParallel)."""

    rank = 0
    world_size = 1
    device = torch.device("cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module that runs the training forward (DDP's also averages the gradients)."""
        return model

    def pad(self, order: torch.Tensor) -> torch.Tensor:
        """An epoch's order of examples, made to split evenly over the processes."""
        return order

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Runs before each epoch (DDP seeds each rank's dropout masks here)."""

    def all_sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes."""
        return values


SINGLE = Replica()


def evaluate_split(model: nn.Module, split: Split, batch_size: int = 2048) -> tuple[float, float]:
    """Eval-mode (loss, accuracy)."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(split.y), batch_size):
            logits = model(split.X[i : i + batch_size])
            y = split.y[i : i + batch_size]
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
    return loss / len(split.y), correct / len(split.y)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Split,
    batch_size: int,
    shuffle: torch.Generator,
    progress: bool,
    desc: str,
    replica: Replica = SINGLE,
) -> tuple[float, float]:
    """One epoch in training mode; returns the mean (loss, accuracy) over its examples.

    batch_size is the global batch. In data-parallel training every process draws the same
    order and takes every world_size-th example of each batch, as DistributedSampler does: equal
    shares (the replica pads the order, batch_size is a multiple of world_size), so the average
    of their mean losses' gradients, which DDP takes, is the gradient of the batch's mean loss.
    """
    model.train()
    order = replica.pad(torch.randperm(len(train.y), generator=shuffle))
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm.tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False)
    for i in bar:
        idx = order[i : i + batch_size][replica.rank :: replica.world_size].to(train.y.device)
        X, y = train.X[idx], train.y[idx]
        logits = model(X)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(-1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    total_loss, total_correct, total_seen = replica.all_sum([loss_sum, correct, seen])
    return total_loss / total_seen, total_correct / total_seen


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def state_path(out: Path) -> Path:
    # Not *.safetensors, so a folder of served checkpoints never picks it up.
    return out.with_name(out.name + ".state")


def history_path(out: Path) -> Path:
    return out.with_name(out.stem + ".history.json")


def save_state(
    path: Path,
    cfg: TrainConfig,
    model: Network,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    state: State,
) -> None:
    """Everything resume needs, as tensors plus JSON: no pickle."""
    tensors = {f"model.{k}": v for k, v in weights_of(model).items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.shuffle"] = shuffle.get_state()
    for pid, buffers in optimizer.state_dict()["state"].items():
        for key, value in buffers.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
    meta = {"identity": cfg.identity(), "epoch": state.epoch, "history": state.history}
    save_tensors(path, STATE_KIND, tensors, meta)


def load_state(
    path: Path,
    cfg: TrainConfig,
    model_config: Config,
    optimizer_for: Callable[[Network], torch.optim.Optimizer],
    shuffle: torch.Generator,
) -> tuple[Network, torch.optim.Optimizer, State]:
    tensors, meta, _ = load_tensors(path, STATE_KIND)
    if meta.get("identity") != cfg.identity():
        raise CheckpointError(
            f"{path.name}: holds the state of a run with other settings; "
            "pass --no-resume to start over"
        )
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    model = model_from_tensors(weights, model_config, path.name)
    optimizer = optimizer_for(model)
    opt_state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng.torch"])
    shuffle.set_state(tensors["rng.shuffle"])
    return model, optimizer, State(epoch=int(meta["epoch"]), history=list(meta["history"]))


def fit(
    cfg: TrainConfig,
    train: Split,
    val: Split,
    on_epoch: Callable[[Network, torch.optim.Optimizer, torch.Generator, State], None],
    replica: Replica = SINGLE,
) -> tuple[Network, State]:
    """Seeded training from scratch or from the saved state; on_epoch runs after each epoch.

    The model comes back on the CPU, whatever replica.device it trained on.
    """
    torch.manual_seed(cfg.seed)  # dropout masks and initial weights
    shuffle = torch.Generator().manual_seed(cfg.seed)
    model_config = cfg.model_config()
    spath = state_path(cfg.out)
    # The model goes to its device before the optimizer exists: loaded optimizer state follows it.
    if cfg.resume and spath.exists():
        model, optimizer, state = load_state(
            spath, cfg, model_config, lambda m: make_optimizer(m.to(replica.device), cfg), shuffle
        )
        log.info("resuming after epoch %d from %s", state.epoch, spath)
    else:
        model = build_model(model_config).to(replica.device)
        optimizer, state = make_optimizer(model, cfg), State()
    net, train, val = replica.wrap(model), train.to(replica.device), val.to(replica.device)
    while state.epoch < cfg.epochs:
        desc = f"epoch {state.epoch + 1}/{cfg.epochs}"
        replica.start_epoch(cfg.seed, state.epoch)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(state.epoch)
        train_loss, train_acc = train_epoch(
            net, optimizer, train, cfg.batch_size, shuffle, cfg.progress, desc, replica
        )
        val_loss, val_acc = evaluate_split(model, val)
        state.epoch += 1
        state.history.append(
            {
                "epoch": state.epoch,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
        log.info(
            "%s train loss %.4f acc %.4f | val loss %.4f acc %.4f",
            desc,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
        )
        on_epoch(model, optimizer, shuffle, state)
    return model.cpu(), state


def input_shape(config: Config) -> list[int]:
    """The checkpoint's preprocessing.input_shape: a CNN's [C, H, W]; for the MLP, the image's
    [H, W] (the shape a client may send instead of the flat pixels)."""
    if isinstance(config, CNNConfig):
        return list(config.input_shape)
    return list(IMAGE_SHAPE[1:])


Finalize = Callable[[Network, Split, Split], dict[str, Any]]


def run(cfg: TrainConfig, finalize: Finalize | None = None, replica: Replica = SINGLE) -> Path:
    """Train, then write the checkpoint, its history and the test accuracy (eval mode).

    finalize(model, val, test) returns more metadata for the checkpoint (e.g. calibration).
    In data-parallel training only rank 0 writes files, evaluates on the test set and finalizes.
    """
    started = time.monotonic()
    data, train, val, test = load_splits(cfg.data_dir, val_size=cfg.val_size, limit=cfg.limit)
    spath, hpath = state_path(cfg.out), history_path(cfg.out)

    def on_epoch(
        model: Network, optimizer: torch.optim.Optimizer, shuffle: torch.Generator, st: State
    ) -> None:
        if replica.rank == 0:
            save_state(spath, cfg, model, optimizer, shuffle, st)
            atomic_write_bytes(hpath, json.dumps(st.history, indent=2).encode())

    model, state = fit(cfg, train, val, on_epoch, replica)
    if replica.rank != 0:
        return cfg.out
    test_loss, test_acc = evaluate_split(model, test)
    last = state.history[-1]
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "preprocessing": {
            "input_shape": input_shape(model.config),
            "flattened": model.config.num_inputs,
            "range": [0.0, 1.0],
            "scaling": "uint8 pixel / 255, row-major, dark background (Fashion-MNIST)",
        },
        "metrics": {
            "epochs": state.epoch,
            "train_loss": last["train_loss"],
            "train_accuracy": last["train_accuracy"],
            "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"],
            "test_loss": test_loss,
            "test_accuracy": test_acc,
        },
        "training": cfg.identity() | {"epochs": cfg.epochs},
        "provenance": {
            "dataset": "Fashion-MNIST",
            "data_source": data.source,
            "data_sha256": data.sha256,
            "train_examples": len(train.y),
            "val_examples": len(val.y),
            "seed": cfg.seed,
            "processes": replica.world_size,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "train_seconds": round(time.monotonic() - started, 1),
        },
    }
    if finalize is not None:
        meta |= finalize(model, val, test)
    save_checkpoint(cfg.out, model, LABELS, meta)
    spath.unlink(missing_ok=True)  # the run is complete: a new one starts afresh
    log.info("test accuracy %.4f (eval mode); wrote %s", test_acc, cfg.out)
    return cfg.out
