"""A convolutional dropout network: deterministic conv blocks, then the MLP's dense dropout head.

Everything stochastic is in the dense head (models.mlp.forward_layers): the conv blocks and their
BatchNorm are the deterministic part, `embed`, which the MC engine runs once per input. BatchNorm
uses batch statistics in train mode and its running statistics in eval mode, the mode the engine
puts every network in.
"""

import itertools
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from models.mlp import check_dense_head, forward_layers


@dataclass(frozen=True)
class CNNConfig:
    """Blocks of `convs_per_block` x [3x3 conv (padding 1, no bias), BatchNorm, ReLU], one block
    per entry of `channels`, each ending in a 2x2 max pool; then the dense head: `hidden` layers,
    each followed by ReLU and dropout with its p from `dropout`, and a linear layer to the
    outputs. Inputs are images [in_channels, height, width]."""

    kind: ClassVar[str] = "cnn"  # written by to_dict: what models.networks builds from it
    in_channels: int = 1
    height: int = 28
    width: int = 28
    channels: tuple[int, ...] = (32, 64)
    convs_per_block: int = 1
    hidden: tuple[int, ...] = (256,)
    dropout: tuple[float, ...] = (0.5,)
    num_outputs: int = 10

    def __post_init__(self) -> None:
        # Lists from JSON or argparse become tuples, so configs compare and hash by value.
        for name in ("channels", "hidden", "dropout"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("in_channels", "height", "width", "convs_per_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(
                f"channels must be positive integers, one per block, got {self.channels}"
            )
        side = 2 ** len(self.channels)
        if self.height < side or self.width < side:
            raise ValueError(
                f"{len(self.channels)} blocks halve the image {len(self.channels)} times: height "
                f"and width must be at least {side}, got {self.height}x{self.width}"
            )
        check_dense_head(self.hidden, self.dropout, self.num_outputs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)

    @property
    def num_inputs(self) -> int:
        """What a client sends: C*H*W numbers, row-major over [C, H, W]."""
        return self.in_channels * self.height * self.width

    @property
    def features(self) -> int:
        """The size of the flattened conv output, the dense head's input (each pool floors)."""
        blocks = len(self.channels)
        return self.channels[-1] * (self.height >> blocks) * (self.width >> blocks)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The dense layers' sizes, as MLPConfig.sizes gives the MLP's."""
        return (self.features, *self.hidden, self.num_outputs)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, **asdict(self)}
        for name in ("channels", "hidden", "dropout"):
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CNNConfig":
        return cls(
            in_channels=int(d["in_channels"]),
            height=int(d["height"]),
            width=int(d["width"]),
            channels=tuple(int(c) for c in d["channels"]),
            convs_per_block=int(d["convs_per_block"]),
            hidden=tuple(int(h) for h in d["hidden"]),
            dropout=tuple(float(p) for p in d["dropout"]),
            num_outputs=int(d["num_outputs"]),
        )


class ConvBN(nn.Module):
    """3x3 conv (padding 1, no bias: BatchNorm's shift takes its place), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(X)))


class DropoutCNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.units: list[list[ConvBN]] = []  # block by block; the modules of self.features
        blocks: list[nn.Module] = []
        widths = (config.in_channels, *config.channels)
        for cin, cout in itertools.pairwise(widths):
            units = [ConvBN(cin if i == 0 else cout, cout) for i in range(config.convs_per_block)]
            self.units.append(units)
            blocks.append(nn.Sequential(*units, nn.MaxPool2d(2)))
        self.features = nn.Sequential(*blocks)
        self.head = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(config.sizes))
        # Channels-last convolutions run faster on the CPU (bench/cnn_layout.py); the weights
        # keep their values in any layout, so checkpoints are unaffected. (torch's stubs lack
        # Module.to's memory_format.)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def layers(self) -> list[nn.Linear]:
        return list(self.head)  # type: ignore[arg-type]

    def images(self, X: torch.Tensor) -> torch.Tensor:
        """X as [batch, C, H, W]: from [batch, C*H*W] (row-major over [C, H, W]), from
        [batch, C, H, W], or from [batch, H, W] when C is 1. Any other shape is refused."""
        c, h, w = self.config.input_shape
        accepted = [(c * h * w,), (c, h, w)] + ([(h, w)] if c == 1 else [])
        if X.dim() < 2 or tuple(X.shape[1:]) not in accepted:
            raise ValueError(
                f"expected inputs of shape [batch, {c * h * w}] or [batch, {c}, {h}, {w}]"
                f"{f' or [batch, {h}, {w}]' if c == 1 else ''}, got {list(X.shape)}"
            )
        return X.reshape(X.shape[0], c, h, w)

    def embed(self, X: torch.Tensor) -> torch.Tensor:
        """[batch, features]: the conv blocks, deterministic (BatchNorm in the module's mode)."""
        out: torch.Tensor = self.features(self.images(X))
        return out.flatten(1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return forward_layers(
            self.layers(), self.config.dropout, self.embed(X), dropout=self.training
        )
