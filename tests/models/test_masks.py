import math

import pytest
import torch

from models.masks import MaskSampler, PassMasks


@pytest.mark.parametrize(("p", "bits"), [(0.5, 1), (0.25, 8), (0.3, 16), (0.1, 16), (0.9, 16)])
def test_keep_rate_is_one_minus_p(p: float, bits: int) -> None:
    sampler = MaskSampler(p)
    assert sampler.bits == bits
    assert abs(sampler.keep - (1 - p)) <= 2 ** -(bits + 1)  # the nearest multiple of 2**-bits
    assert sampler.scale == pytest.approx(1 / sampler.keep)
    n = 1_000_000
    mask = sampler.sample((1000, 1000), torch.Generator().manual_seed(0))
    assert mask.shape == (1000, 1000)
    assert mask.dtype == torch.float32
    assert bool(((mask == 0) | (mask == 1)).all())
    # The kept count is Binomial(n, keep): allow 5 standard deviations.
    assert abs(float(mask.mean()) - sampler.keep) < 5 * math.sqrt(sampler.keep * (1 - p) / n)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])
def test_every_lane_and_position_is_fair(p: float) -> None:
    # A lane that is always kept or dropped (say the sign bit of a word) would show up as a
    # column far from keep: 64 columns cover every lane position of the int64 words.
    sampler = MaskSampler(p)
    rows = 20_000
    columns = sampler.sample((rows, 64), torch.Generator().manual_seed(1)).mean(0)
    tolerance = 5 * math.sqrt(sampler.keep * (1 - sampler.keep) / rows)
    assert (columns - sampler.keep).abs().max() < tolerance


def test_scaled_mask_is_unbiased() -> None:
    sampler = MaskSampler(0.3)
    n = 2_000_000
    scaled = sampler.sample((n,), torch.Generator().manual_seed(2)).double() * sampler.scale
    # Each term has mean 1 and variance (1 - keep) / keep.
    assert abs(float(scaled.mean()) - 1) < 5 * math.sqrt((1 - sampler.keep) / sampler.keep / n)


def test_seeded_masks_repeat_and_odd_sizes_work() -> None:
    sampler = MaskSampler(0.5)
    a = sampler.sample((7, 3), torch.Generator().manual_seed(3))
    b = sampler.sample((7, 3), torch.Generator().manual_seed(3))
    c = sampler.sample((7, 3), torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert sampler.sample((0, 5), torch.Generator()).shape == (0, 5)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_p_outside_the_open_interval_is_refused(p: float) -> None:
    with pytest.raises(ValueError, match="0 < p < 1"):
        MaskSampler(p)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "layers",
    [[(0.5, 16)], [(0.5, 3), (0.5, 70)], [(0.3, 16)], [(0.2, 5), (0.5, 7)], [(0.25, 9), (0.3, 2)]],
)
def test_pass_masks_are_each_generators_own_and_the_same_in_any_chunk(
    device: str, layers: list[tuple[float, int]]
) -> None:
    masks = PassMasks(layers)

    def generators() -> list[torch.Generator]:
        return [torch.Generator(device).manual_seed(seed) for seed in (5, 6, 7)]

    passes = [3, 1, 7]
    together = masks.draw(passes, generators())
    assert [m.shape for m in together] == [(11, width) for _, width in layers]
    assert all(m.device.type == device for m in together)
    alone = [masks.draw([n], [g]) for n, g in zip(passes, generators(), strict=True)]
    for layer, mask in enumerate(together):
        assert torch.equal(mask, torch.cat([a[layer] for a in alone]))
    # A generator's passes drawn in chunks of any size are the same passes.
    g = generators()[2]
    chunks = [masks.draw([k], [g]) for k in (2, 4, 1)]
    for layer, mask in enumerate(together):
        assert torch.equal(mask[4:], torch.cat([c[layer] for c in chunks]))


def test_pass_masks_keep_each_layers_rate_in_every_column() -> None:
    layers = [(0.5, 40), (0.3, 24), (0.25, 8)]
    rows = 20_000
    drawn = PassMasks(layers).draw([rows], [torch.Generator().manual_seed(8)])
    for (p, width), mask in zip(layers, drawn, strict=True):
        keep = MaskSampler(p).keep
        assert mask.shape == (rows, width)
        assert bool(((mask == 0) | (mask == 1)).all())
        tolerance = 5 * math.sqrt(keep * (1 - keep) / rows)
        assert (mask.mean(0) - keep).abs().max() < tolerance
