"""The image routes (service/api/images.py) and the conversion to Fashion-MNIST's form
(service/inputs/image.py)."""

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile
from pydantic import SecretStr

import service.api.images
from service.inputs.image import Converted, ImageError, convert
from service.settings import Settings
from tests.helpers import make_client, wait_ready

IMAGE = "/v1/models/tiny/uncertainty/image"
PREPROCESS = "/v1/models/tiny/preprocess/image"
UNCERTAINTY = "/v1/models/tiny/uncertainty"
MAX_BYTES = 150_000  # under the tests' body limit (200 000), so that this limit answers
MAX_PIXELS = 3_000_000  # 2000 x 1000 passes, 2000 x 2000 does not
MAX_SIDE = 2500  # 2400 x 1 passes, 2600 x 1 does not
U8 = npt.NDArray[np.uint8]


@pytest.fixture
def image_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "max_image_bytes": MAX_BYTES,
            "max_image_pixels": MAX_PIXELS,
            "max_image_side": MAX_SIDE,
        }
    )


@pytest.fixture
def client(image_settings: Settings) -> Iterator[TestClient]:
    with make_client(image_settings) as c:
        wait_ready(c)
        yield c


def encode(image: Image.Image, kind: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


def blob(shape: tuple[int, int], seed: int | None = 0) -> U8:
    """A light shape on black, Fashion-MNIST-like: [h, w] uint8; seed None: a smooth shade."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    inside = ((x - w / 2) / (w / 3)) ** 2 + ((y - h / 2) / (h / 3)) ** 2 < 1
    if seed is None:
        texture = 120 + (135 * x) // w
    else:
        texture = np.random.default_rng(seed).integers(120, 256, (h, w))
    return np.where(inside, texture, 0).astype(np.uint8)


def limited(data: bytes, max_pixels: int = MAX_PIXELS) -> Converted:
    return convert(data, max_bytes=MAX_BYTES, max_pixels=max_pixels, max_side=MAX_SIDE)


def to_pixels(data: bytes) -> npt.NDArray[np.float32]:
    return limited(data).pixels.reshape(28, 28)


def post(client: TestClient, data: bytes, route: str = IMAGE, **form: Any) -> Any:
    return client.post(route, files={"file": ("upload", data, "image/png")}, data=form)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit gray pixels and holds almost none of them."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(1000)))
        + chunk(b"IEND", b"")
    )


def zip_bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: a few tens of kB, side**2 pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the images whose pixels were decoded."""
    seen: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        seen.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


def assert_clean(response: Any) -> None:
    """No traceback, source path or Python repr in an error body."""
    text = response.text
    for leak in ("Traceback", 'File "', "/work", ".py", "site-packages", "<_io.", "object at 0x"):
        assert leak not in text, text


def assert_422(response: Any, field: str, fragment: str) -> None:
    assert response.status_code == 422, response.text
    (error,) = [e for e in response.json()["detail"] if e["loc"] == ["body", field]]
    assert fragment in error["msg"], error["msg"]
    assert_clean(response)


# ------------------------------------------------------------------------- the conversion


def test_a_28x28_gray_image_is_its_pixels_over_255() -> None:
    v = blob((28, 28))
    pixels = to_pixels(encode(Image.fromarray(v, "L")))
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, (v / 255).astype(np.float32))


def test_a_light_background_is_inverted() -> None:
    v = np.full((28, 28), 255, np.uint8)
    v[8:20, 5:15] = 40  # a dark object on white, as in a product photo
    converted = limited(encode(Image.fromarray(v, "L")))
    assert converted.inverted
    expected = np.zeros((28, 28), np.float32)
    expected[8:20, 5:15] = np.float32(215 / 255)
    np.testing.assert_array_equal(converted.pixels.reshape(28, 28), expected)


def test_the_border_median_decides_the_inversion() -> None:
    # An object touching the border does not flip the decision: the median is the background.
    v = np.zeros((28, 28), np.uint8)
    v[:, 10:18] = 250
    assert not limited(encode(Image.fromarray(v)), max_pixels=10**6).inverted
    assert limited(encode(Image.fromarray(255 - v)), max_pixels=10**6).inverted


def test_fit_keeps_the_aspect_ratio_and_centres_on_black() -> None:
    v = np.zeros((28, 56), np.uint8)  # 56 wide, 28 high
    v[:, 20:36] = 200  # a light bar on black
    pixels = to_pixels(encode(Image.fromarray(v)))
    # Halved to 28 x 14, centred: 7 black rows above and below, 2 x 2 block means inside.
    assert not pixels[:7].any()
    assert not pixels[21:].any()
    inner = pixels[7:21]
    expected = v.reshape(14, 2, 28, 2).mean(axis=(1, 3)).round() / 255
    np.testing.assert_allclose(inner, expected, atol=1 / 255)
    assert inner[:, 10:18].min() > 0
    assert inner[:, :10].max() == 0


def test_the_background_becomes_black() -> None:
    v = np.full((28, 28), 30, np.uint8)  # a dark gray background, as in a photo
    v[5:10, 5:10] = 30 + 45
    v[12:20, 12:20] = 255
    pixels = to_pixels(encode(Image.fromarray(v)))
    assert not pixels[v == 30].any()
    np.testing.assert_array_equal(pixels[v == 75], np.float32(round(45 * 255 / 225) / 255))
    np.testing.assert_array_equal(pixels[v == 255], np.float32(1))
    # A light-gray background is inverted first, then taken to black.
    converted = limited(encode(Image.fromarray(255 - v)), max_pixels=10**6)
    assert converted.inverted
    np.testing.assert_array_equal(converted.pixels.reshape(28, 28), pixels)


def test_a_single_pixel_fills_the_square() -> None:
    # One pixel is all border: background, black, whatever its shade.
    for shade in (0, 100, 255):
        assert not to_pixels(encode(Image.new("L", (1, 1), shade))).any()
    # Two pixels, 0 over 200: the ring's median is 100, so 200 becomes (200 - 100) * 255 / 155,
    # and the 1 x 2 image is enlarged to 14 x 28 between black bands.
    pixels = to_pixels(encode(Image.fromarray(np.array([[0], [200]], np.uint8))))
    assert not pixels[:, :7].any()
    assert not pixels[:, 21:].any()
    assert pixels[0, 7:21].max() == 0
    np.testing.assert_array_equal(pixels[27, 7:21], np.float32(165 / 255))


def test_rgb_is_luma() -> None:
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[10:18, 10:18] = (200, 120, 40)
    expected = np.asarray(Image.fromarray(rgb).convert("L")) / 255
    np.testing.assert_array_equal(
        to_pixels(encode(Image.fromarray(rgb))), expected.astype(np.float32)
    )


def test_sixteen_bit_gray_is_reduced_to_eight_bits() -> None:
    v = blob((28, 28))
    wide = Image.fromarray(v.astype(np.uint16) * 257)
    assert wide.mode == "I;16"
    np.testing.assert_array_equal(to_pixels(encode(wide)), (v / 255).astype(np.float32))


def test_transparency_is_background() -> None:
    alpha = np.zeros((28, 28), np.uint8)
    alpha[6:22, 6:22] = 255
    for shade in (40, 220):  # a dark object, then a light one, on transparency
        gray = np.full((28, 28), shade, np.uint8)
        la = Image.merge("LA", (Image.fromarray(gray), Image.fromarray(alpha)))
        for image in (la, la.convert("RGBA")):
            converted = limited(encode(image))
            pixels = converted.pixels.reshape(28, 28)
            assert not pixels[alpha == 0].any()  # the background is black either way
            object_shade = 255 - shade if shade < 128 else shade
            np.testing.assert_array_equal(pixels[alpha > 0], np.float32(object_shade / 255))
            assert converted.inverted == (shade < 128)
    clear = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    assert not to_pixels(encode(clear)).any()


def test_palette_and_one_bit_images() -> None:
    v = blob((28, 28))
    paletted = Image.fromarray(v).convert("P")
    np.testing.assert_array_equal(
        to_pixels(encode(paletted)), np.asarray(paletted.convert("L")) / np.float32(255)
    )
    bits = Image.fromarray(v > 128).convert("1")
    np.testing.assert_array_equal(to_pixels(encode(bits)), (v > 128).astype(np.float32))


def test_an_animated_gif_gives_its_first_frame() -> None:
    first, second = Image.fromarray(blob((28, 28), 1)), Image.new("L", (28, 28), 0)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    np.testing.assert_array_equal(to_pixels(data), np.asarray(first) / np.float32(255))


def test_the_exif_orientation_is_applied() -> None:
    wide = Image.fromarray(blob((14, 28)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    converted = limited(encode(wide, exif=exif))
    assert (converted.width, converted.height) == (14, 28)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty"),
        (b"just some text\n", "not an image"),
        (encode(Image.new("L", (28, 28)), "TIFF"), "not in a supported format"),
        (encode(Image.fromarray(blob((64, 64))))[:-200], "truncated or corrupt"),
        (encode(Image.fromarray(blob((64, 64))))[:30], "not an image"),
    ],
    ids=["empty", "text", "tiff", "truncated", "header-only"],
)
def test_bad_files_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason) as caught:
        limited(data)
    assert not caught.value.too_large


def test_limits_are_checked_before_decoding(decodes: list[tuple[int, int]]) -> None:
    for data, fragment in [
        (png_header(2000, 2000), "2000 x 2000 = 4000000 pixels, over the limit of 3000000"),
        (png_header(2600, 1), "2600 x 1: a side over the limit of 2500"),
        (png_header(1, 2600), "1 x 2600: a side over the limit of 2500"),
        (png_header(10_000, 10_000), "more pixels than the limit"),  # Pillow's warning
        (png_header(100_000, 100_000), "more pixels than the limit"),  # Pillow's error
        (zip_bomb_png(20_000), "more pixels than the limit"),
        (bytes(MAX_BYTES + 1), f"over the limit of {MAX_BYTES}"),
    ]:
        with pytest.raises(ImageError, match=fragment) as caught:
            limited(data)
        assert caught.value.too_large
    assert decodes == []
    to_pixels(encode(Image.new("L", (30, 20))))
    assert set(decodes) == {(30, 20)}  # the spy sees what is decoded


# ------------------------------------------------------------------------- the route


def test_the_image_route_answers_as_the_json_route(client: TestClient) -> None:
    v = blob((28, 28), seed=3)
    image = post(client, encode(Image.fromarray(v)), samples="40", seed="7")
    assert image.status_code == 200, image.text
    instances = [(v.reshape(-1) / 255).tolist()]
    json_route = client.post(UNCERTAINTY, json={"instances": instances, "samples": 40, "seed": 7})
    assert image.json() == json_route.json()
    assert (image.json()["samples"], image.json()["seed"]) == (40, 7)


def test_preprocess_gives_the_pixels_the_image_route_uses(client: TestClient) -> None:
    rgb = np.full((300, 500, 3), 245, np.uint8)  # a photo-like upload: light background
    rgb[60:240, 150:350] = (90, 60, 30)
    data = encode(Image.fromarray(rgb), "JPEG", quality=90)
    pre = client.post(PREPROCESS, files={"file": ("shoe.jpg", data, "image/jpeg")})
    assert pre.status_code == 200, pre.text
    body = pre.json()
    assert (body["width"], body["height"], body["format"], body["inverted"]) == (
        500,
        300,
        "JPEG",
        True,
    )
    assert body["pixels"] == to_pixels(data).reshape(-1).tolist()
    image = post(client, data, samples="25", seed="1")
    json_route = client.post(
        UNCERTAINTY, json={"instances": [body["pixels"]], "samples": 25, "seed": 1}
    )
    assert image.json() == json_route.json()


def _gallery() -> list[tuple[str, bytes]]:
    v = blob((40, 30))
    rgba = Image.fromarray(v).convert("RGBA")
    cases = {
        "L 28x28 png": encode(Image.fromarray(blob((28, 28))).convert("L")),
        "L 1x1 png": encode(Image.new("L", (1, 1), 90)),
        "RGB 100x40 png": encode(Image.fromarray(blob((40, 100))).convert("RGB")),
        "RGBA png": encode(rgba),
        "LA png": encode(Image.fromarray(v).convert("LA")),
        "P png": encode(Image.fromarray(v).convert("P")),
        "1 png": encode(Image.fromarray(v > 100).convert("1")),
        "I;16 png": encode(Image.fromarray(v.astype(np.uint16) * 257)),
        "L jpeg": encode(Image.fromarray(v), "JPEG"),
        "RGB jpeg 7x300": encode(Image.fromarray(blob((300, 7))).convert("RGB"), "JPEG"),
        "RGB 2000x1000 png": encode(Image.fromarray(blob((1000, 2000), None)).convert("RGB")),
        "gif": encode(Image.fromarray(v), "GIF"),
        "bmp": encode(Image.fromarray(v), "BMP"),
        "webp": encode(Image.fromarray(v).convert("RGB"), "WEBP", lossless=True),
    }
    return list(cases.items())


@pytest.mark.parametrize(("name", "data"), _gallery(), ids=[name for name, _ in _gallery()])
def test_good_images_of_many_modes_and_sizes(client: TestClient, name: str, data: bytes) -> None:
    assert len(data) <= MAX_BYTES, name
    r = post(client, data, samples="16", seed="2")
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    assert sum(prediction["votes"]) == 16
    pre = post(client, data, PREPROCESS)
    assert pre.status_code == 200, pre.text
    pixels = pre.json()["pixels"]
    assert len(pixels) == 784
    assert min(pixels) >= 0
    assert max(pixels) <= 1
    body = {"instances": [pixels], "samples": 16, "seed": 2}
    assert client.post(UNCERTAINTY, json=body).json() == r.json()


def test_defaults_for_samples_and_seed(client: TestClient) -> None:
    r = post(client, encode(Image.fromarray(blob((28, 28)))))
    assert r.status_code == 200, r.text
    assert (r.json()["samples"], r.json()["seed"]) == (20, None)
    # HTML forms send an empty field: the same as leaving it out.
    r = post(client, encode(Image.fromarray(blob((28, 28)))), samples="", seed="")
    assert (r.json()["samples"], r.json()["seed"]) == (20, None)


@pytest.mark.parametrize(
    ("form", "field", "fragment"),
    [
        ({"samples": "true"}, "samples", "valid integer"),
        ({"samples": "1.5"}, "samples", "integer"),
        ({"samples": "ten"}, "samples", "valid integer"),
        ({"samples": "100.0"}, "samples", "valid integer"),
        ({"samples": "+100"}, "samples", "valid integer"),
        ({"samples": "1_0"}, "samples", "valid integer"),
        ({"samples": " 10"}, "samples", "valid integer"),
        ({"samples": "0"}, "samples", "greater than or equal to 1"),
        ({"samples": "501"}, "samples", "less than or equal to 500"),
        ({"seed": "false"}, "seed", "valid integer"),
        ({"seed": "-1"}, "seed", "greater than or equal to 0"),
        ({"seed": str(2**53)}, "seed", "less than or equal to 9007199254740991"),
    ],
)
def test_samples_and_seed_are_validated(
    client: TestClient, form: dict[str, str], field: str, fragment: str
) -> None:
    assert_422(post(client, encode(Image.fromarray(blob((28, 28)))), **form), field, fragment)


def test_a_missing_file_is_422(client: TestClient) -> None:
    for route in (IMAGE, PREPROCESS):
        assert_422(client.post(route, data={"samples": "5"}), "file", "Field required")
        # A file field given as text is no upload either.
        assert_422(client.post(route, data={"file": "abc"}), "file", "")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "file: the file is empty"),
        (b"GIF89a not really", "file: not an image"),
        (b"<!doctype html><p>hello</p>", "file: not an image"),
        (encode(Image.fromarray(blob((64, 64))))[:-200], "file: the image data is truncated"),
    ],
    ids=["empty", "fake-gif", "html", "truncated"],
)
def test_bad_files_are_422_naming_the_file(client: TestClient, data: bytes, fragment: str) -> None:
    for route in (IMAGE, PREPROCESS):
        assert_422(post(client, data, route), "file", fragment)


def test_over_the_limits_is_413_without_decoding(
    client: TestClient, decodes: list[tuple[int, int]]
) -> None:
    for data, fragment in [
        (bytes(MAX_BYTES + 1), f"file: {MAX_BYTES + 1} bytes, over the limit of {MAX_BYTES}"),
        (png_header(2000, 2000), "file: the image is 2000 x 2000 = 4000000 pixels"),
        (png_header(100_000, 100_000), "file: the image declares more pixels than the limit"),
        (zip_bomb_png(20_000), "file: the image declares more pixels than the limit"),
    ]:
        for route in (IMAGE, PREPROCESS):
            r = post(client, data, route)
            assert r.status_code == 413, r.text
            assert r.json()["detail"].startswith(fragment), r.json()
            assert_clean(r)
    assert decodes == []
    # Over the body limit, the middleware answers before the form is parsed.
    r = post(client, bytes(250_000))
    assert r.status_code == 413
    assert r.json() == {"detail": "request body exceeds the limit of 200000 bytes"}


def test_instances_times_samples_over_the_limit_is_413(image_settings: Settings) -> None:
    settings = image_settings.model_copy(update={"max_total_samples": 100})
    with make_client(settings) as c:
        wait_ready(c)
        r = post(c, encode(Image.fromarray(blob((28, 28)))), samples="101")
        assert r.status_code == 413
        assert r.json() == {
            "detail": "instances x samples = 1 x 101 = 101 exceeds the limit of 100"
        }


def test_unknown_model_is_404(client: TestClient) -> None:
    data = encode(Image.fromarray(blob((28, 28))))
    for route in ("/v1/models/nope/uncertainty/image", "/v1/models/nope/preprocess/image"):
        r = client.post(route, files={"file": ("a.png", data, "image/png")})
        assert r.status_code == 404
        assert r.json() == {"detail": "model 'nope' not found; available: tiny"}


def test_the_routes_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for route in (IMAGE, PREPROCESS):
        operation = paths[route.replace("tiny", "{model}")]["post"]
        assert {"400", "401", "404", "413", "422", "503"} <= set(operation["responses"])
        assert "multipart/form-data" in operation["requestBody"]["content"]
    assert "/" not in paths


def test_the_page_is_served_without_an_api_key(image_settings: Settings) -> None:
    settings = image_settings.model_copy(update={"api_key": SecretStr("sesame")})
    with make_client(settings) as c:
        wait_ready(c)
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>MC dropout: see the uncertainty</title>" in page.text
        for asset in ("app.js", "style.css", "examples.json"):
            assert c.get(f"/static/{asset}").status_code == 200
        data = encode(Image.fromarray(blob((28, 28))))
        assert post(c, data).status_code == 401
        assert (
            c.post(
                IMAGE, files={"file": ("a.png", data)}, headers={"X-API-Key": "sesame"}
            ).status_code
            == 200
        )


def test_at_most_two_uploads_are_decoded_at_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    active, peak = 0, 0
    lock, release = threading.Lock(), threading.Event()

    def held(data: bytes, **limits: int) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            assert release.wait(10)
            return convert(data, **limits)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(service.api.images, "convert", held)
    data = encode(Image.fromarray(blob((28, 28)), "L"))
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(post, client, data, seed=0) for _ in range(4)]
        deadline = time.monotonic() + 10
        while active < 2:
            assert time.monotonic() < deadline, "two decodes never started"
            time.sleep(0.01)
        time.sleep(0.3)  # the other two had time to start, and must be waiting
        assert active == 2
        release.set()
        assert [a.result().status_code for a in answers] == [200] * 4
    assert peak == 2
