"""Bernoulli keep-masks from packed random words, the cheap part of fast MC dropout.

Drawing int64 words and comparing their 8- or 16-bit lanes against a threshold, or taking their
single bits (p = 0.5), costs a small fraction of what torch's bernoulli_ costs an element
(bench/masks.py; the numbers: docs/performance.md#the-mc-engine-one-request).
"""

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class MaskSampler:
    """Keeps each element with probability `keep`, the nearest multiple of 2**-bits to 1-p.

    1-bit lanes for p = 0.5 (a word's 64 bits, eight times fewer random words than bytes), 8-bit
    lanes when 256 (1-p) is whole (p = 0.25, 0.75, ...), else 16-bit lanes: the keep rate is then
    within 2**-17 of 1-p, and `scale` = 1/keep makes the masked activations unbiased exactly.
    """

    p: float
    bits: int = field(init=False)
    keep: float = field(init=False)
    _threshold: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"a mask needs 0 < p < 1, got {self.p}")
        bits = 1 if self.p == 0.5 else 8 if (256 * (1 - self.p)).is_integer() else 16
        count = max(1, round((1 - self.p) * 2**bits))  # lanes below the threshold are kept
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "keep", count / 2**bits)
        # 8- and 16-bit lanes are signed and uniform on [-2**(bits-1), 2**(bits-1)):
        # P(lane < t) = count/2**bits. A 1-bit lane is a byte holding its bit in place: 0 or not.
        object.__setattr__(self, "_threshold", 1 if bits == 1 else count - 2 ** (bits - 1))

    @property
    def scale(self) -> float:
        return 1.0 / self.keep

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """A 0/1 mask of `shape` and `dtype` on the generator's device."""
        n = math.prod(shape)
        words = torch.empty(self.words(n), dtype=torch.int64, device=generator.device)
        words.random_(_INT64_MIN, _INT64_MAX, generator=generator)
        lanes = self._lanes(words)
        return self._compare((lanes if lanes.numel() == n else lanes[:n]).view(shape), dtype)

    def masks(
        self, words: torch.Tensor, width: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Masks [rows, width] from random words [rows, n] (a row's first `width` lanes; n may
        be a column slice of a wider block)."""
        lanes = self._lanes(words)
        return self._compare(lanes if lanes.shape[1] == width else lanes[:, :width], dtype)

    def words(self, lanes: int) -> int:
        """The random words that `lanes` lanes take."""
        return -(-lanes // (64 // self.bits))

    def _lanes(self, words: torch.Tensor) -> torch.Tensor:
        """The words' lanes, in order: 64 // bits of them, each word's together; 1-D words
        give 1-D lanes, and [rows, n] words [rows, n x lanes]."""
        if self.bits == 1:
            # [..., 8] AND [8]: plane b keeps bit b of each of the word's 8 bytes, so byte k of
            # plane b is that bit, in place. (One AND on int64s: unpacking the bits one byte at a
            # time with a broadcast over uint8 was several times slower,
            # docs/performance.md#the-mc-engine-one-request.)
            planes = torch.bitwise_and(words[..., None], _bit_planes(words.device))
            return planes.view(torch.uint8).view(*words.shape[:-1], -1)
        return words.view(torch.int8 if self.bits == 8 else torch.int16)

    def _compare(self, lanes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Comparing straight into a float tensor is faster than making a bool mask, and the
        # float mask multiplies without a type-promoting copy
        # (docs/performance.md#the-mc-engine-one-request).
        mask = torch.empty(lanes.shape, dtype=dtype, device=lanes.device)
        return torch.lt(lanes, self._threshold, out=mask)


class PassMasks:
    """The masks of a network's dropout layers, pass by pass: each pass is one sub-network.

    A pass takes the next W words of its generator's stream (W: the words of all its layers'
    masks, in layer order, each layer's starting on a whole word), so pass t's masks are the
    same whatever chunk of passes draws them, and every instance of a request meets the same
    sub-network in pass t, whatever else the request holds: an answer depends on the instance,
    N and the seed alone.
    """

    def __init__(self, layers: Sequence[tuple[float, int]]) -> None:
        """layers: each dropout layer's (p, width), in order."""
        self.layers = [(MaskSampler(p), width) for p, width in layers]
        counts = [sampler.words(width) for sampler, width in self.layers]
        self.starts = list(itertools.accumulate(counts, initial=0))
        self.words = self.starts[-1]
        # Where the layers share p, one comparison covers them all (four tensor operations
        # fewer for two layers), and each layer's mask is a view of its columns.
        shared = {sampler for sampler, _ in self.layers}
        self.shared = shared.pop() if len(shared) == 1 else None

    def draw(
        self,
        passes: Sequence[int],
        generators: Sequence[torch.Generator],
        dtype: torch.dtype = torch.float32,
    ) -> list[torch.Tensor]:
        """One mask [sum(passes), width] per layer: passes[i] passes from generators[i], one
        after another. One random launch per generator, and one comparison per p."""
        device = generators[0].device
        words = torch.empty((sum(passes), self.words), dtype=torch.int64, device=device)
        blocks = torch.split(words, list(passes)) if len(generators) > 1 else [words]
        for block, generator in zip(blocks, generators, strict=True):
            block.random_(_INT64_MIN, _INT64_MAX, generator=generator)
        if self.shared is not None:
            lanes = 64 // self.shared.bits
            every = self.shared.masks(words, self.words * lanes, dtype)
            return [
                every[:, start * lanes : start * lanes + width]
                for start, (_, width) in zip(self.starts, self.layers, strict=False)
            ]
        return [
            sampler.masks(words[:, start:end], width, dtype)
            for start, end, (sampler, width) in zip(
                self.starts[:-1], self.starts[1:], self.layers, strict=True
            )
        ]


@functools.cache
def _bit_planes(device: torch.device) -> torch.Tensor:
    """[8] int64: 0x0101...01 shifted by 0 to 7, as signed words."""
    planes = [(0x0101010101010101 << b) % 2**64 for b in range(8)]
    return torch.tensor([w - 2**64 if w > _INT64_MAX else w for w in planes], device=device)
