"""The d2l.ai "Dropout" network, from scratch and concise, with a shared functional forward."""

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from models.dropout import dropout_layer

Variant = Literal["scratch", "concise"]


def check_dense_head(hidden: Sequence[int], dropout: Sequence[float], num_outputs: int) -> None:
    """The dense layers every network ends with: at least one hidden layer, each followed by
    ReLU and dropout with its own p in [0, 1), then a linear layer to at least two outputs."""
    if num_outputs < 2:
        raise ValueError(f"num_outputs must be >= 2, got {num_outputs}")
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive integers, got {tuple(hidden)}")
    if len(dropout) != len(hidden):
        raise ValueError(
            f"give one dropout probability per hidden layer: {len(hidden)} hidden "
            f"layers but {len(dropout)} probabilities"
        )
    if any(not 0.0 <= p < 1.0 for p in dropout):
        raise ValueError(f"dropout probabilities must be in [0, 1), got {tuple(dropout)}")


@dataclass(frozen=True)
class MLPConfig:
    kind: ClassVar[str] = "mlp"  # written by to_dict: what models.networks builds from it
    num_inputs: int = 784
    num_outputs: int = 10
    hidden: tuple[int, ...] = (256, 256)
    # One probability per hidden layer: dropout follows each hidden ReLU, as in the chapter.
    dropout: tuple[float, ...] = (0.5, 0.5)
    variant: Variant = "scratch"

    def __post_init__(self) -> None:
        # Lists from JSON or argparse become tuples, so configs compare and hash by value.
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "dropout", tuple(self.dropout))
        if self.num_inputs < 1:
            raise ValueError(f"num_inputs must be >= 1, got {self.num_inputs}")
        check_dense_head(self.hidden, self.dropout, self.num_outputs)
        if self.variant not in ("scratch", "concise"):
            raise ValueError(f"variant must be 'scratch' or 'concise', got {self.variant!r}")

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.num_inputs, *self.hidden, self.num_outputs)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, **asdict(self)}
        d["hidden"], d["dropout"] = list(self.hidden), list(self.dropout)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MLPConfig":
        """From to_dict's output, or from a checkpoint written before configs had a kind."""
        return cls(
            num_inputs=int(d["num_inputs"]),
            num_outputs=int(d["num_outputs"]),
            hidden=tuple(int(h) for h in d["hidden"]),
            dropout=tuple(float(p) for p in d["dropout"]),
            variant=d["variant"],
        )


def forward_layers(
    linears: Sequence[nn.Linear],
    ps: Sequence[float],
    X: torch.Tensor,
    *,
    dropout: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Linear-ReLU-dropout blocks then a linear head; the dropout mode is an argument, not state."""
    H = X.reshape(X.shape[0], -1)
    for linear, p in zip(linears[:-1], ps, strict=True):
        H = F.relu(linear(H))
        if dropout:
            H = dropout_layer(H, p, generator)
    logits: torch.Tensor = linears[-1](H)
    return logits


class DropoutMLPScratch(nn.Module):
    """The chapter's from-scratch form: dropout_layer applied after each hidden layer."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        sizes = config.sizes
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))

    def layers(self) -> list[nn.Linear]:
        return list(self.linears)  # type: ignore[arg-type]

    def embed(self, X: torch.Tensor) -> torch.Tensor:
        """[batch, features]: the deterministic part before the dense layers (here a flatten)."""
        return X.reshape(X.shape[0], -1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return forward_layers(self.layers(), self.config.dropout, X, dropout=self.training)


class DropoutMLPConcise(nn.Module):
    """The chapter's concise form: nn.Sequential with nn.Dropout."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = [nn.Flatten()]
        sizes = config.sizes
        for i, p in enumerate(config.dropout):
            blocks += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU(), nn.Dropout(p)]
        blocks.append(nn.Linear(sizes[-2], sizes[-1]))
        self.net = nn.Sequential(*blocks)

    def layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def embed(self, X: torch.Tensor) -> torch.Tensor:
        """[batch, features]: the deterministic part before the dense layers (here a flatten)."""
        return X.reshape(X.shape[0], -1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(X)
        return out


DropoutMLP = DropoutMLPScratch | DropoutMLPConcise


def build_model(config: MLPConfig) -> DropoutMLP:
    return DropoutMLPScratch(config) if config.variant == "scratch" else DropoutMLPConcise(config)
