"""An uploaded image in Fashion-MNIST's form: 28 x 28, grayscale, a light object on black, [0, 1].

The rules, in order (docs/web.md shows them with examples):
1. PNG, JPEG, GIF, BMP or WebP; of an animated file, the first frame. The byte limit is checked
   first, then the size the header declares against the pixel and side limits: nothing is
   decoded before.
2. The EXIF orientation is applied (photos from phones).
3. Grayscale: ITU-R 601-2 luma (Pillow's "L"); 16-bit gray becomes 8 bits (v / 257, rounded).
   Transparent pixels are background: composited on white behind a dark object and on black
   behind a light one (the object's shade is its alpha-weighted mean gray, below 127.5 = dark).
4. Inversion when the background is light: the median of the outermost ring of pixels is above
   127.5, so v -> 255 - v. Fashion-MNIST is the negative of product photos on white.
5. The background to black, as in Fashion-MNIST: with b the ring's median (after step 4, so at
   most 127, rounded down), v -> 0 for v <= b, else round((v - b) * 255 / (255 - b)). An image
   on pure black or pure white (b = 0) keeps its shades.
6. Fit: the longer side to 28 (area average when shrinking, bilinear when enlarging), the aspect
   ratio kept, centred on black padding.
7. v / 255 as float32, [1, 784].
"""

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from service.inputs.pixels import FEATURES, SIDE

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class ImageError(ValueError):
    """A reason the upload cannot be used; too_large for the limits (413), else invalid (422)."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


@dataclass(frozen=True, eq=False)
class Converted:
    pixels: npt.NDArray[np.float32]  # [1, 784] in [0, 1]
    width: int  # of the upload, after the EXIF orientation
    height: int
    format: str
    inverted: bool


def _open(data: bytes, max_pixels: int, max_side: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (Image.MAX_IMAGE_PIXELS); the warning arrives as an error only
        # where warnings are errors, and otherwise the check below refuses the image.
        raise ImageError(
            f"the image declares more pixels than the limit of {max_pixels}", too_large=True
        ) from None
    except Exception:  # Pillow's plugins raise many kinds of errors on a malformed header
        kinds = ", ".join(FORMATS)
        raise ImageError(f"not an image, or not in a supported format ({kinds})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width} x {height} = {width * height} pixels, over the limit of "
            f"{max_pixels}",
            too_large=True,
        )
    if max(width, height) > max_side:
        raise ImageError(
            f"the image is {width} x {height}: a side over the limit of {max_side}", too_large=True
        )
    try:
        image.load()  # the first frame only
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:
        raise ImageError("the image data is truncated or corrupt") from None
    return image


def _gray_and_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """8-bit gray ("L") and, where the image has transparency, its alpha ("L")."""
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit gray
        v = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return Image.fromarray(((2 * v + 257) // 514).astype(np.uint8), "L"), None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        gray, alpha = image.convert("RGBA").convert("LA").split()
        return gray, alpha
    if image.mode in ("L", "1", "P", "RGB"):
        return image.convert("L"), None
    return image.convert("RGB").convert("L"), None  # CMYK, YCbCr, ...


def _composite(gray: Image.Image, alpha: Image.Image) -> Image.Image:
    g, a = np.asarray(gray), np.asarray(alpha)
    opacity = int(a.sum(dtype=np.uint64))
    shade = 0
    for rows in range(0, g.shape[0], 256):  # in strips: no full-size temporary of uint32
        chunk = g[rows : rows + 256].astype(np.uint32) * a[rows : rows + 256]
        shade += int(chunk.sum(dtype=np.uint64))
    # Fully transparent: nothing to see, all background (black).
    background = 255 if opacity and 2 * shade < 255 * opacity else 0
    out = Image.new("L", gray.size, background)
    out.paste(gray, (0, 0), alpha)
    return out


def background(gray: Image.Image) -> float:
    """The median of the outermost ring of pixels: the background's shade."""
    w, h = gray.size
    edges = [(0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)]
    ring = np.concatenate([np.asarray(gray.crop(box)).ravel() for box in edges])
    return float(np.median(ring))


def to_black(gray: Image.Image, level: int) -> Image.Image:
    """Shades up to level become 0; the rest are stretched back to [0, 255]."""
    if level == 0:
        return gray
    scale = 255 / (255 - level)
    return gray.point([0 if v <= level else round((v - level) * scale) for v in range(256)])


def fit(gray: Image.Image) -> Image.Image:
    """The longer side to 28, the aspect ratio kept, centred on black."""
    w, h = gray.size
    scale = SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        gray = gray.resize(size, resample)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(gray, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return canvas


def convert(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> Converted:
    """The upload's 784 pixels, or ImageError with the reason."""
    if not data:
        raise ImageError("the file is empty")
    if len(data) > max_bytes:
        raise ImageError(
            f"the file is {len(data)} bytes, over the limit of {max_bytes}", too_large=True
        )
    with _open(data, max_pixels, max_side) as image:
        try:
            gray, alpha = _gray_and_alpha(image)
        except Exception:
            raise ImageError(f"unsupported pixel mode {image.mode!r}") from None
        if alpha is not None:
            gray = _composite(gray, alpha)
        inverted = background(gray) > 127.5
        if inverted:
            gray = ImageOps.invert(gray)
        gray = to_black(gray, int(background(gray)))
        # Divided in float64 and then rounded once: the float32 a JSON client's v / 255 becomes.
        pixels = np.asarray(fit(gray), dtype=np.float64) / 255
        return Converted(
            pixels=pixels.astype(np.float32).reshape(1, FEATURES),
            width=image.width,
            height=image.height,
            format=str(image.format),
            inverted=inverted,
        )
