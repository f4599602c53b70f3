"""Turn numpy arrays, nested lists and PIL images into the JSON instances of v1.

- A numpy array is one image ([784] or [28, 28]) or a batch ([B, 784] or [B, 28, 28]). uint8
  arrays are pixels 0 to 255 and are divided by 255; other arrays are sent as they are.
- A list or tuple is a batch: each item a numpy array, a PIL image, or a nested list of 784
  numbers or 28 rows of 28 (sent as it is: the server checks it and names what is wrong).
- A PIL image (Pillow is optional and never imported here) is converted to grayscale ("L"),
  resized to 28 x 28 with bilinear resampling when it has another size (the aspect ratio is not
  kept), and divided by 255. Fashion-MNIST shows light objects on a dark background: invert a
  dark object photographed on white first (PIL.ImageOps.invert).
"""

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    ImageLike: TypeAlias = np.ndarray | Sequence[Any] | PILImage
else:
    ImageLike: TypeAlias = np.ndarray | Sequence[Any] | Any

Images: TypeAlias = np.ndarray | Sequence[ImageLike] | ImageLike
SIDE = 28
FEATURES = SIDE * SIDE


def _is_pil(value: object) -> bool:
    # A PIL image exists only once PIL.Image is imported, so there is nothing to import here.
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def _from_pil(image: Any) -> list[float]:
    gray = image.convert("L")
    if gray.size != (SIDE, SIDE):
        gray = gray.resize((SIDE, SIDE), resample=sys.modules["PIL.Image"].Resampling.BILINEAR)
    pixels: list[float] = (np.asarray(gray, dtype=np.float64) / 255).reshape(-1).tolist()
    return pixels


def _scaled(array: np.ndarray) -> list[Any]:
    values: list[Any] = (array / 255 if array.dtype == np.uint8 else array).tolist()
    return values


def _one(image: Any) -> Any:
    if _is_pil(image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _scaled(image)
    return image


def to_instances(images: Images) -> list[Any]:
    """The v1 "instances" list for one image or a batch (see the module's docstring)."""
    if _is_pil(images):
        return [_from_pil(images)]
    if isinstance(images, np.ndarray):
        batch = images[None] if images.ndim == 1 or images.shape == (SIDE, SIDE) else images
        if batch.ndim not in (2, 3):
            raise ValueError(
                f"an array must be one image ([{FEATURES}] or [{SIDE}, {SIDE}]) or a batch "
                f"([B, {FEATURES}] or [B, {SIDE}, {SIDE}]), got shape {list(images.shape)}"
            )
        return _scaled(batch)
    if isinstance(images, (list, tuple)):
        return [_one(image) for image in images]
    raise TypeError(
        "images must be a numpy array, a list of images or a PIL image, "
        f"got {type(images).__name__}"
    )
