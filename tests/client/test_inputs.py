"""numpy arrays, nested lists and PIL images all reach the server as the same instances."""

import numpy as np
import pytest
from PIL import Image

from mcdropout_client import Client, to_instances
from mcdropout_client.images import Images


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_arrays_lists_and_images_give_the_same_predictions(server: str) -> None:
    u8 = pixels(2)
    floats = u8 / 255  # float64 [2, 28, 28]
    with Client(server) as client:
        expected = client.predict("tiny", floats.reshape(2, 784).tolist())
        same: list[Images] = [
            floats,  # [B, 28, 28]
            floats.reshape(2, 784),  # [B, 784]
            u8,  # uint8: divided by 255
            u8.reshape(2, 784),
            [u8[0], floats[1]],  # a list of arrays
            (floats[0].tolist(), floats[1].reshape(784).tolist()),  # nested lists, a tuple
            [Image.fromarray(u8[0]), Image.fromarray(u8[1])],  # PIL, already 28 x 28 "L"
        ]
        for batch in same:
            assert client.predict("tiny", batch) == expected
        one = client.predict("tiny", [floats[0]])
        assert client.predict("tiny", floats[0]) == one  # one [28, 28] image
        assert client.predict("tiny", floats[0].reshape(784)) == one  # one [784] image
        assert client.predict("tiny", Image.fromarray(u8[0])) == one  # one PIL image
        # Batches of one and of two may round differently in float32 matmuls.
        assert one.probabilities[0] == pytest.approx(expected.probabilities[0], abs=1e-6)


def test_pil_images_become_grayscale_28_by_28_in_0_1() -> None:
    rgb = Image.new("RGB", (56, 84), (255, 0, 0))
    (instance,) = to_instances(rgb)
    gray = round(255 * 299 / 1000)  # ITU-R 601-2 luma of pure red, as Pillow's convert("L")
    assert len(instance) == 784
    assert instance == pytest.approx([gray / 255] * 784)
    ramp = Image.fromarray((np.arange(784) % 256).astype(np.uint8).reshape(28, 28))
    assert to_instances([ramp]) == [(np.arange(784) % 256 / 255).tolist()]
    big = Image.fromarray(np.full((100, 50), 255, dtype=np.uint8))
    assert to_instances(big) == [[1.0] * 784]


def test_float_arrays_are_sent_as_they_are() -> None:
    x = np.random.default_rng(0).random((1, 784)).astype(np.float32)
    (instance,) = to_instances(x)
    assert np.array_equal(np.asarray(instance, dtype=np.float32), x[0])
    assert to_instances(np.zeros((2, 784), dtype=np.int64)) == [[0] * 784] * 2


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        (np.zeros((2, 3, 28, 28)), ValueError, "got shape [2, 3, 28, 28]"),
        (np.zeros(()), ValueError, "got shape []"),
        ("pixels", TypeError, "got str"),
        (7, TypeError, "got int"),
    ],
)
def test_what_is_not_images_is_refused_before_sending(
    value: object, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        to_instances(value)  # type: ignore[arg-type]
    assert fragment in str(caught.value)
