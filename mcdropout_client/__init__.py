"""A Python client for the MC-dropout inference service's v1 REST API, sync and async.

from mcdropout_client import Client

with Client("http://127.0.0.1:8000") as client:
    answer = client.uncertainty("fashion-cnn", images, samples=100, seed=0)
"""

from mcdropout_client._protocol import RetryPolicy
from mcdropout_client.async_client import AsyncClient
from mcdropout_client.client import Client
from mcdropout_client.errors import (
    APIError,
    InvalidInputError,
    MCDropoutError,
    NotFoundError,
    NotReadyError,
    ServerError,
    TooLargeError,
    UnauthorizedError,
)
from mcdropout_client.images import Images, to_instances
from mcdropout_client.results import (
    Architecture,
    Calibration,
    Health,
    InputSpec,
    ModelCard,
    Prediction,
    PredictResult,
    SampleLimits,
    UncertaintyPrediction,
    UncertaintyResult,
)

__all__ = [
    "APIError",
    "Architecture",
    "AsyncClient",
    "Calibration",
    "Client",
    "Health",
    "Images",
    "InputSpec",
    "InvalidInputError",
    "MCDropoutError",
    "ModelCard",
    "NotFoundError",
    "NotReadyError",
    "PredictResult",
    "Prediction",
    "RetryPolicy",
    "SampleLimits",
    "ServerError",
    "TooLargeError",
    "UnauthorizedError",
    "UncertaintyPrediction",
    "UncertaintyResult",
    "to_instances",
]
