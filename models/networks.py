"""The one place that knows every architecture: its config's `kind`, how to read the config from
a checkpoint's metadata and how to build the network.

Every network has the contract the MC engine relies on: `embed(X)`, the deterministic part
([batch, features]); `layers()`, the dense nn.Linear layers that follow it, with one dropout p
per hidden layer in `config.dropout` (dropout after each hidden ReLU); `config.num_outputs`.
"""

from typing import overload

from models import mlp
from models.cnn import CNNConfig, DropoutCNN
from models.mlp import DropoutMLP, MLPConfig

Config = MLPConfig | CNNConfig
Network = DropoutMLP | DropoutCNN

CONFIGS: dict[str, type[MLPConfig] | type[CNNConfig]] = {c.kind: c for c in (MLPConfig, CNNConfig)}
KINDS = tuple(CONFIGS)


def config_from_dict(d: object) -> Config:
    """The config of checkpoint metadata; one without a `kind` is an MLP's (written before
    there were other architectures). An unknown kind is a ValueError that names the known ones."""
    if not isinstance(d, dict):
        raise ValueError(f"the config must be a JSON object, got {type(d).__name__}")
    kind = d.get("kind", MLPConfig.kind)
    if kind not in CONFIGS:
        raise ValueError(
            f"unknown architecture kind {kind!r} (this build knows {', '.join(KINDS)})"
        )
    return CONFIGS[kind].from_dict(d)


@overload
def build_model(config: MLPConfig) -> DropoutMLP: ...
@overload
def build_model(config: CNNConfig) -> DropoutCNN: ...
def build_model(config: Config) -> Network:
    if isinstance(config, CNNConfig):
        return DropoutCNN(config)
    return mlp.build_model(config)
