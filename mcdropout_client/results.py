"""Typed answers, mirroring the v1 responses; fields a newer server adds are ignored."""

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Health(_Result):
    status: str
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class Architecture(_Result):
    layer_sizes: list[int]  # the dense layers, from their input features to the classes
    dropout: list[float]  # one p per hidden dense layer
    variant: str | None  # the MLP's form; None for a CNN
    # Older servers (MLPs only) send neither: an MLP's values.
    kind: str = "mlp"  # "mlp" or "cnn"
    conv_channels: list[int] = Field(default_factory=list)  # a CNN's channels per conv block
    convs_per_block: int | None = None  # a CNN's


class InputSpec(_Result):
    shape: list[int]
    also_accepts: list[int]
    range: list[float]
    description: str


class SampleLimits(_Result):
    default: int
    maximum: int


class Calibration(_Result):
    temperature_eval: float
    temperature_mc: float
    samples: int
    abstain_below_agreement: float
    target_selective_accuracy: float
    target_reached: bool
    coverage_val: float
    selective_accuracy_val: float
    coverage_test: float | None = None
    selective_accuracy_test: float | None = None


class ModelCard(_Result):
    name: str
    version: str
    architecture: Architecture
    labels: list[str]
    input: InputSpec
    metrics: dict[str, int | float]
    sha256: str
    created_at: str
    samples: SampleLimits
    calibration: Calibration | None = None


class Prediction(_Result):
    class_index: int
    label: str
    probabilities: list[float]
    confidence: float


class PredictResult(_Result):
    model: str
    version: str
    predictions: list[Prediction]

    @property
    def probabilities(self) -> np.ndarray:
        """[instances, classes] float64."""
        return np.array([p.probabilities for p in self.predictions])


class UncertaintyPrediction(_Result):
    class_index: int
    label: str
    agreement: float
    agreement_interval: list[float] = Field(default_factory=list)  # 95% Wilson [low, high]
    abstain: bool | None = None  # None: the model has no calibrated threshold
    votes: list[int]
    mean_probabilities: list[float]
    std_probabilities: list[float]
    predictive_entropy: float
    expected_entropy: float
    mutual_information: float


class UncertaintyResult(_Result):
    model: str
    version: str
    samples: int
    seed: int | None
    predictions: list[UncertaintyPrediction]

    @property
    def mean_probabilities(self) -> np.ndarray:
        """[instances, classes] float64."""
        return np.array([p.mean_probabilities for p in self.predictions])


class ModelList(_Result):
    models: list[ModelCard] = Field(default_factory=list)
