"""What a V2 infer request asks for (mode, outputs, limits) and the tensors that answer it."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.engine import MAX_SEED
from service.api.deps import LimitError, batched, check_limits
from service.api.v2.tensors import InferenceRequest, InputTensor, OutputTensor, V2Error, bad
from service.inference.batcher import Batcher
from service.registry import ServedModel
from service.settings import Settings

INPUT = "images"
# name -> (datatype, shape after the batch axis; "classes" is the model's class count)
OUTPUTS: dict[str, tuple[str, tuple[int | str, ...]]] = {
    "probabilities": ("FP64", ("classes",)),
    "class_index": ("INT64", ()),
    "agreement": ("FP64", ()),
    "votes": ("INT64", ("classes",)),
    "predictive_entropy": ("FP64", ()),
    "expected_entropy": ("FP64", ()),
    "mutual_information": ("FP64", ()),
    "std_probabilities": ("FP64", ("classes",)),
}
EVAL_OUTPUTS = ("probabilities", "class_index")
REQUEST_PARAMETERS = ("mc_samples", "seed", "binary_data_output")


@dataclass(frozen=True)
class Plan:
    samples: int | None  # None: eval mode
    seed: int | None
    outputs: list[tuple[str, bool]]  # (name, as binary data), in the order asked for


def plan(body: InferenceRequest, served: ServedModel, settings: Settings) -> Plan:
    samples, seed = _mode(body, served, settings)
    return Plan(samples, seed, _requested(body, samples is not None))


def pixel_input(body: InferenceRequest) -> InputTensor:
    (tensor, *others) = body.inputs
    if others or tensor.name != INPUT:
        raise bad(f"the model takes one input {INPUT!r}, got {[t.name for t in body.inputs]}")
    if tensor.datatype not in ("FP32", "UINT8"):
        raise bad(
            f"input {INPUT!r}: datatype must be FP32 (pixels in [0, 1]) or UINT8 (0 to 255), "
            f"got {tensor.datatype!r}"
        )
    return tensor


def _int_parameter(parameters: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise bad(f"parameter {name!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise bad(f"parameter {name!r} must be in [{low}, {high}], got {value}")
    return value


def _mode(
    body: InferenceRequest, served: ServedModel, settings: Settings
) -> tuple[int | None, int | None]:
    """(mc_samples, seed): (None, None) is eval mode."""
    unknown = [k for k in body.parameters if k not in REQUEST_PARAMETERS]
    if unknown:
        raise bad(f"unknown parameter {unknown[0]!r}; known: {', '.join(REQUEST_PARAMETERS)}")
    samples = _int_parameter(body.parameters, "mc_samples", 1, settings.max_samples)
    seed = _int_parameter(body.parameters, "seed", 0, MAX_SEED)
    if samples is None and seed is not None:
        raise bad("parameter 'seed' needs 'mc_samples': eval mode is deterministic")
    if samples is not None and not served.engine.supports_mc:
        raise bad(f"model {served.name!r} has no dropout: MC dropout is undefined")
    return samples, seed


def _requested(body: InferenceRequest, mc: bool) -> list[tuple[str, bool]]:
    """(output name, as binary data) in the order asked for, or every output of the mode."""
    default_binary = body.parameters.get("binary_data_output", False)
    if type(default_binary) is not bool:
        raise bad(f"parameter 'binary_data_output' must be true or false, got {default_binary!r}")
    if body.outputs is None:
        return [(name, default_binary) for name in (OUTPUTS if mc else EVAL_OUTPUTS)]
    chosen: list[tuple[str, bool]] = []
    for out in body.outputs:
        if out.name not in OUTPUTS:
            raise bad(f"unknown output {out.name!r}; known: {', '.join(OUTPUTS)}")
        if not mc and out.name not in EVAL_OUTPUTS:
            raise bad(f"output {out.name!r} needs MC mode: set the parameter 'mc_samples'")
        if any(out.name == name for name, _ in chosen):
            raise bad(f"output {out.name!r} is requested twice")
        for key in out.parameters:
            if key != "binary_data":
                raise bad(f"output {out.name!r}: parameter {key!r} is not supported")
        binary = out.parameters.get("binary_data", default_binary)
        if type(binary) is not bool:
            raise bad(f"output {out.name!r}: 'binary_data' must be true or false")
        chosen.append((out.name, binary))
    return chosen


def within_limits(batch: int, samples: int | None, settings: Settings) -> None:
    """v1's limits and messages, checked before any data is converted; 413 for either."""
    try:
        check_limits(batch, samples, settings, samples_name="mc_samples")
    except LimitError as e:
        raise V2Error(413, e.message) from None


async def _results(
    served: ServedModel, X: torch.Tensor, samples: int | None, seed: int | None, batcher: Batcher
) -> dict[str, np.ndarray]:
    # batched() says 503 (queue full) or 504 (timeout); V2Route answers them as {"error": ...}.
    if samples is None:
        probs = await batched(batcher.predict(served.engine, X))  # [batch, classes]
        return {
            "probabilities": probs.double().numpy(),
            "class_index": probs.max(-1).indices.numpy(),
        }
    answer = await batched(batcher.uncertainty(served.engine, X, samples, seed))
    return {
        "probabilities": np.array(answer.mean_probabilities, dtype=np.float64),
        "class_index": np.array(answer.class_index, dtype=np.int64),
        "agreement": np.array(answer.agreement, dtype=np.float64),
        "votes": np.array(answer.votes, dtype=np.int64),
        "predictive_entropy": np.array(answer.predictive_entropy, dtype=np.float64),
        "expected_entropy": np.array(answer.expected_entropy, dtype=np.float64),
        "mutual_information": np.array(answer.mutual_information, dtype=np.float64),
        "std_probabilities": np.array(answer.std_probabilities, dtype=np.float64),
    }


async def run(
    served: ServedModel, X: torch.Tensor, plan: Plan, batcher: Batcher
) -> list[OutputTensor]:
    results = await _results(served, X, plan.samples, plan.seed, batcher)
    return [
        OutputTensor(name, OUTPUTS[name][0], results[name], binary) for name, binary in plan.outputs
    ]
