"""KServe V2 infer bodies: JSON tensors and the binary tensor data extension, both ways.

A request body is a JSON header, optionally followed by raw tensor bytes when the
Inference-Header-Content-Length header gives the JSON's size (Triton's binary_tensor_data
extension, which tritonclient uses by default). Numbers are little-endian, row-major.
"""

import itertools
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

from service.edge.body import json_text
from service.inputs.pixels import FEATURES, SIDE, first_bad_pixel

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, Parameter]
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
# numpy dtypes of the wire format, little-endian whatever the host.
WIRE: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "UINT8": np.dtype("u1"),
    "INT64": np.dtype("<i8"),
}


class V2Error(Exception):
    """An answer of the protocol's form {"error": message} with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def bad(message: str) -> V2Error:
    return V2Error(400, message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputTensor(_Strict):
    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: StrictStr
    parameters: Parameters = {}
    data: Any = None  # checked by numpy in one pass, never float by float by pydantic


class RequestedOutput(_Strict):
    name: StrictStr
    parameters: Parameters = {}


class InferenceRequest(_Strict):
    id: StrictStr | None = None
    parameters: Parameters = {}
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part that follows it (empty without the extension)."""
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise bad(
            f"Inference-Header-Content-Length must be a byte count of at most the body's "
            f"{len(body)} bytes, got {header_length!r}"
        )
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def parse_request(header: bytes) -> InferenceRequest:
    """The JSON header (UTF-8 only: service.edge.body.json_text)."""
    try:
        document = json.loads(json_text(header))
    except ValueError as e:
        raise bad(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad("the body's JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise bad("the body must be a JSON object with 'inputs'")
    try:
        return InferenceRequest.model_validate(document)
    except PydanticError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise bad(f"{where}: {first['msg']}") from None


def check_pixel_shape(tensor: InputTensor) -> int:
    """The batch size of [B, 784] or [B, 28, 28], before any data is looked at."""
    shape = tensor.shape
    if len(shape) < 2 or shape[1:] not in ([FEATURES], [SIDE, SIDE]):
        raise bad(
            f"input {tensor.name!r}: shape must be [B, {FEATURES}] or [B, {SIDE}, {SIDE}], "
            f"got {shape}"
        )
    if shape[0] < 1:
        raise bad(f"input {tensor.name!r}: the batch needs at least one instance")
    return shape[0]


def _has_bool(data: list[Any], depth: int) -> bool:
    flat: Any = data
    for _ in range(depth - 1):
        flat = itertools.chain.from_iterable(flat)
    return any(type(v) is bool for v in flat)  # numpy would quietly read true as 1


def _json_values(tensor: InputTensor) -> np.ndarray:
    name, data = tensor.name, tensor.data
    if not isinstance(data, list):
        raise bad(f"input {name!r}: 'data' must be a list of numbers (or binary data)")
    try:
        a = np.asarray(data)
    except ValueError:
        raise bad(f"input {name!r}: nested data has rows of different lengths") from None
    integers = tensor.datatype == "UINT8"
    if a.dtype.kind not in ("iu" if integers else "iuf") or (a.size and _has_bool(data, a.ndim)):
        kind = "integers" if integers else "numbers"
        raise bad(f"input {name!r}: {tensor.datatype} data must hold {kind} only")
    if a.ndim != 1 and list(a.shape) != tensor.shape:
        raise bad(f"input {name!r}: data of shape {list(a.shape)} does not match {tensor.shape}")
    if a.size != math.prod(tensor.shape):
        raise bad(
            f"input {name!r}: shape {tensor.shape} needs {math.prod(tensor.shape)} values, "
            f"got {a.size}"
        )
    return a.reshape(-1)


def _binary_values(tensor: InputTensor, binary: memoryview) -> np.ndarray:
    size = tensor.parameters["binary_data_size"]
    dtype = WIRE[tensor.datatype]
    expected = math.prod(tensor.shape) * dtype.itemsize
    if type(size) is not int or size != expected:
        raise bad(
            f"input {tensor.name!r}: binary_data_size must be {expected} bytes for "
            f"{tensor.datatype} {tensor.shape}, got {size!r}"
        )
    if tensor.data is not None:
        raise bad(f"input {tensor.name!r}: give 'data' or binary_data_size, not both")
    if size > len(binary):
        raise bad(f"input {tensor.name!r}: the body ends before its {size} bytes of binary data")
    return np.frombuffer(binary[:size], dtype=dtype)


def _locate(tensor: InputTensor, flat_index: int) -> str:
    instance, position = divmod(flat_index, FEATURES)
    return f"input {tensor.name!r}: instance {instance}: value at position {position}"


def _to_pixels(tensor: InputTensor, values: np.ndarray) -> np.ndarray:
    """[B, 784] float32 in [0, 1]; the same rules, and the same float32 values, as v1."""
    if tensor.datatype == "UINT8":
        bad_at = np.flatnonzero((values < 0) | (values > 255))
        if bad_at.size:
            i = int(bad_at[0])
            raise bad(f"{_locate(tensor, i)} is {values[i]}, outside [0, 255]")
        # v1 gets p / 255 computed in float64 and rounds it to float32: so does this.
        scaled = values.astype(np.float64) / 255
        return scaled.astype(np.float32).reshape(-1, FEATURES)
    not_pixel = first_bad_pixel(values)
    if not_pixel is not None:
        i, reason = not_pixel
        raise bad(f"{_locate(tensor, i)} {reason}")
    return values.astype(np.float32).reshape(-1, FEATURES)  # a copy: writable, contiguous


def read_pixels(tensor: InputTensor, binary: memoryview) -> np.ndarray:
    """The input's data, from JSON or from the binary part, as checked [B, 784] float32."""
    for key in tensor.parameters:
        if key in SHARED_MEMORY:
            raise bad(f"input {tensor.name!r}: shared memory is not supported")
        if key != "binary_data_size":
            raise bad(f"input {tensor.name!r}: unknown parameter {key!r}; known: binary_data_size")
    if "binary_data_size" in tensor.parameters:
        values = _binary_values(tensor, binary)
        trailing = len(binary) - values.nbytes
    else:
        values = _json_values(tensor)
        trailing = len(binary)
    if trailing:
        raise bad(f"{trailing} bytes of binary data follow the JSON that no input claims")
    return _to_pixels(tensor, values)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool


def encode_response(head: dict[str, Any], outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary data follows it (else None)."""
    blobs: list[bytes] = []
    described = []
    for out in outputs:
        tensor: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.array.shape),
        }
        if out.binary:
            blob = out.array.astype(WIRE[out.datatype], copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = out.array.reshape(-1).tolist()
        described.append(tensor)
    header = json.dumps({**head, "outputs": described}, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
