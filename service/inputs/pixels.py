"""The model's input, the rule every route applies: 784 pixels (28 x 28) in [0, 1], finite. JSON
instances become a float32 array here, with errors that name the instance and the reason; V2's
tensors (service/api/v2/tensors.py) and the image routes come to the same values."""

import itertools
from typing import Any

import numpy as np

SIDE = 28
FEATURES = SIDE * SIDE
SHAPE_HINT = f"{FEATURES} numbers or {SIDE} rows of {SIDE}"


class InstanceError(ValueError):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"instance {index}: {reason}")
        self.index = index


def _instance(value: Any, index: int, booleans: bool) -> np.ndarray:
    if not isinstance(value, list):
        raise InstanceError(index, f"expected a list of {SHAPE_HINT}")
    try:
        a = np.asarray(value)
    except ValueError:
        raise InstanceError(index, f"rows of different lengths; expected {SHAPE_HINT}") from None
    if a.dtype.kind not in "iuf":
        raise InstanceError(index, "values must be numbers (found text, null, true/false or lists)")
    if a.shape not in ((FEATURES,), (SIDE, SIDE)):
        raise InstanceError(index, f"expected {SHAPE_HINT}, got shape {list(a.shape)}")
    if booleans:  # numpy would quietly read true as 1.0
        flat = value if a.ndim == 1 else itertools.chain.from_iterable(value)
        if bool in map(type, flat):
            raise InstanceError(index, "values must be numbers, not true/false")
    a = a.reshape(FEATURES)
    bad = first_bad_pixel(a)
    if bad is not None:
        position, reason = bad
        raise InstanceError(index, f"value at position {position} {reason}")
    return a


def first_bad_pixel(values: np.ndarray) -> tuple[int, str] | None:
    """The flat index of the first value that is not a pixel (NaN, infinite, outside [0, 1]),
    NaN and infinities first, and what is wrong with it; None if all are pixels."""
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        return int(bad[0]), "is NaN or infinite"
    bad = np.flatnonzero((values < 0) | (values > 1))
    if bad.size:
        i = int(bad[0])
        return i, f"is {values[i]:g}, outside [0, 1]"
    return None


def to_pixels(instances: list[Any], booleans: bool = True) -> np.ndarray:
    """[len(instances), 784] float32, or InstanceError for the first bad instance. booleans=False
    skips the scan for true/false (a large part of one image's conversion:
    bench/request_profile.py), for instances parsed from a JSON text that holds neither token."""
    out = np.empty((len(instances), FEATURES), dtype=np.float32)
    for i, value in enumerate(instances):
        out[i] = _instance(value, i, booleans)
    return out
