from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema

from models.engine import MAX_SEED
from service.inputs.pixels import FEATURES, SHAPE_HINT, SIDE

# Instances are checked by service.inputs.pixels (one numpy pass per instance, with errors
# naming the instance) rather than by pydantic float by float; the schema below is what clients
# see.
Instance = Annotated[
    Any,
    WithJsonSchema(
        {
            "description": f"Pixels in [0, 1], row-major: {SHAPE_HINT}",
            "oneOf": [
                {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0, "maximum": 1},
                    "minItems": FEATURES,
                    "maxItems": FEATURES,
                },
                {
                    "type": "array",
                    "minItems": SIDE,
                    "maxItems": SIDE,
                    "items": {
                        "type": "array",
                        "items": {"type": "number", "minimum": 0, "maximum": 1},
                        "minItems": SIDE,
                        "maxItems": SIDE,
                    },
                },
            ],
        }
    ),
]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Instance] = Field(min_length=1)


class UncertaintyRequest(PredictRequest):
    # JSON integers only, as V2 takes them: not "100", 1e3, 100.0 or true.
    samples: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="stochastic passes N; default per model"
    )
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = Field(
        None, description="makes the answer reproducible"
    )


class Prediction(BaseModel):
    class_index: int
    label: str
    probabilities: list[float]
    confidence: float = Field(description="the largest probability")


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class UncertaintyPrediction(BaseModel):
    class_index: int = Field(description="argmax of the mean probabilities")
    label: str
    agreement: float = Field(description="share of the N passes whose argmax is class_index")
    agreement_interval: list[float] = Field(
        description="95% Wilson interval [low, high] for the agreement of infinitely many passes"
    )
    abstain: bool | None = Field(
        description="agreement below the model's calibrated threshold; null if it has none"
    )
    votes: list[int] = Field(description="passes voting for each class; sums to N")
    mean_probabilities: list[float]
    std_probabilities: list[float] = Field(description="population std over the N passes")
    predictive_entropy: float = Field(description="H[mean p], nats")
    expected_entropy: float = Field(description="mean over passes of H[p_t], nats (aleatoric)")
    mutual_information: float = Field(description="predictive - expected, nats (epistemic)")


class UncertaintyResponse(BaseModel):
    model: str
    version: str
    samples: int
    seed: int | None
    predictions: list[UncertaintyPrediction]


class Architecture(BaseModel):
    """The network the checkpoint declares. Dropout is in its dense layers only."""

    kind: str = Field(description="'mlp' (dense layers only) or 'cnn' (conv blocks, then dense)")
    layer_sizes: list[int] = Field(
        description="the dense layers' sizes, from their input features (an MLP's pixels, a "
        "CNN's flattened conv output) to the classes"
    )
    dropout: list[float] = Field(description="one dropout probability per hidden dense layer")
    variant: str | None = Field(
        description="the MLP's form, 'scratch' or 'concise' (the same function); null for a CNN"
    )
    conv_channels: list[int] = Field(
        description="a CNN's channels per conv block (3x3 convs, BatchNorm, ReLU, then a 2x2 "
        "max pool); empty for an MLP"
    )
    convs_per_block: int | None = Field(description="a CNN's convs per block; null for an MLP")


class InputSpec(BaseModel):
    shape: list[int]
    also_accepts: list[int]
    range: list[float]
    description: str


class SampleLimits(BaseModel):
    default: int
    maximum: int


class Calibration(BaseModel):
    """Fitted on the validation split by `python -m training calibrate` (or at training)."""

    temperature_eval: float
    temperature_mc: float
    samples: int = Field(description="MC passes the threshold was chosen at")
    abstain_below_agreement: float
    target_selective_accuracy: float
    target_reached: bool
    coverage_val: float
    selective_accuracy_val: float
    coverage_test: float | None
    selective_accuracy_test: float | None


class ModelCard(BaseModel):
    name: str
    version: str
    architecture: Architecture
    labels: list[str]
    input: InputSpec
    metrics: dict[str, int | float]
    sha256: str
    created_at: str
    samples: SampleLimits
    calibration: Calibration | None


class ModelList(BaseModel):
    models: list[ModelCard]


class Health(BaseModel):
    status: str
    reason: str | None = None


class ErrorDetail(BaseModel):
    detail: str
