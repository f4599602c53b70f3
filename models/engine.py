"""Eval-mode prediction and the MC-dropout engine.

Rules of the design: the dropout mode is an argument of the forward pass, never module state;
layers before the first dropout run once per input; each request draws its masks from its own
generator, pass after pass, every instance of the request meeting the same sub-network in a pass
(models.masks.PassMasks).

An answer is a function of (checkpoint, input, N, seed) alone, bit for bit. On the CPU every
instance runs alone: the same tensor operations on tensors of the same shapes, whatever else its
request holds or the call it shares. (A matrix product's rows are not: the BLAS picks its
kernels and splits the sums by the number of rows and threads, so a row's last bits would follow
its company: docs/reliability.md#the-same-answer-in-any-company.) The cost of running instances
alone is measured by bench/engine.py (docs/performance.md#the-mc-engine-one-request).

On a GPU, where each tensor operation costs a launch of a few microseconds whatever its size, the
requests of a call run together (`fuse`): one pass over all their rows per layer, each request's
masks still drawn from its own generator, and their statistics reduced in one go
(models.stats.grouped_on_device). Fused answers have the same masks, hence the same votes, but
their sums may differ in the last bits with their company.

Memory: an instance's passes run in chunks of at most max_chunk_rows passes (fused: rows, a row
being one instance in one pass). A chunk holds a few float32 tensors per layer width, about
rows x 4 B x 3 x (sum of hidden sizes + classes), 51 MB for 784-256-256-10 at the default 8192 rows
(bench/engine_memory.py measures the peak: docs/performance.md#memory-of-one-request). The
statistics are accumulated per chunk in O(batch x classes), independent of N.
"""

import copy
import functools
import itertools
import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from models.checkpoint import Checkpoint
from models.masks import MaskSampler, PassMasks
from models.mlp import forward_layers
from models.networks import Network
from models.stats import (
    StatsAccumulator,
    UncertaintyStats,
    concat_stats,
    grouped_on_device,
    split_requests,
)

# Seeds are integers in [0, 2**53 - 1], the largest integer every JSON client (JavaScript's
# Number among them) holds exactly: the one range of the engine and of every route.
MAX_SEED = 2**53 - 1


@dataclass(frozen=True)
class MCRequest:
    X: torch.Tensor  # [batch, features] float32
    samples: int
    seed: int | None = None


class Engine:
    """Eval and MC inference for one model; temperatures (fitted on validation data, see
    models/calibration.py) divide the logits of each mode."""

    def __init__(
        self,
        model: Network,
        *,
        max_chunk_rows: int = 8192,
        temperature_eval: float = 1.0,
        temperature_mc: float = 1.0,
        fuse: bool | None = None,
    ) -> None:
        if max_chunk_rows < 1:
            raise ValueError("max_chunk_rows must be at least 1")
        for name, t in (("temperature_eval", temperature_eval), ("temperature_mc", temperature_mc)):
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"{name} must be a positive number, got {t}")
        model.eval()  # once, at load: BatchNorm or the like would stay in eval behaviour
        model.requires_grad_(False)
        self.model = model
        self.max_chunk_rows = max_chunk_rows
        self.temperature_eval = temperature_eval
        self.temperature_mc = temperature_mc
        self.linears = model.layers()
        self.ps = model.config.dropout
        self.device = self.linears[0].weight.device
        self._fuse = fuse
        # The prefix runs up to and including the hidden layer that the first dropout follows.
        self.first_dropout = next((i for i, p in enumerate(self.ps) if p > 0), None)
        self.samplers = [MaskSampler(p) if p > 0 else None for p in self.ps]
        # Each pass's masks of the dropouts from the first on, one sub-network.
        widths = [linear.out_features for linear in self.linears[:-1]]
        self.pass_masks = PassMasks([(p, w) for p, w in zip(self.ps, widths, strict=True) if p > 0])
        # Constants are folded into weights once: each dropout's 1/keep into the next layer,
        # (h * m / q) W^T = (h * m) (W / q)^T, and 1/temperature into the last one. That saves
        # a pass over every masked activation and over the logits. Hidden layers' weights are
        # stored transposed, [in, out] and contiguous: dropping inactive inputs (_active) then
        # selects whole rows, where selecting columns of [out, in] is a strided gather (slower:
        # docs/performance.md#the-mc-engine-one-request); the narrow last layer multiplies
        # faster as [out, in].
        # (weight [in, out], or [out, in] for the last layer; bias [out])
        # The last layer's classes are padded to a multiple of 16 (_padded_classes).
        self.classes = self.linears[-1].out_features
        self.tail: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.first_dropout is not None:
            rest = self.linears[self.first_dropout + 1 :]
            for i, linear in enumerate(rest, self.first_dropout):
                sampler = self.samplers[i]
                scale = sampler.scale if sampler is not None else 1.0
                if linear is rest[-1]:
                    t = temperature_mc
                    self.tail.append(_padded_classes(linear.weight * (scale / t), linear.bias / t))
                else:
                    self.tail.append(((linear.weight * scale).T.contiguous(), linear.bias))

    def to(self, device: str | torch.device) -> "Engine":
        """This engine on `device`: itself if it is there, else a new engine on a copy."""
        if torch.device(device) == self.device:
            return self
        return Engine(
            copy.deepcopy(self.model).to(device),
            max_chunk_rows=self.max_chunk_rows,
            temperature_eval=self.temperature_eval,
            temperature_mc=self.temperature_mc,
            fuse=self._fuse,
        )

    @functools.cached_property
    def fuse(self) -> bool:
        """Whether the requests of one call run together, in groups of up to max_chunk_rows rows:
        as asked, else on every device but the CPU (see the module's docstring). Fused, the
        statistics come back on the CPU."""
        return self._fuse if self._fuse is not None else self.device.type != "cpu"

    @property
    def supports_mc(self) -> bool:
        return self.first_dropout is not None

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Eval-mode class probabilities [batch, classes], each instance run alone."""
        with torch.inference_mode():
            X = X.to(self.device)
            rows = [self._eval(X[i : i + 1]) for i in range(X.shape[0])]
            return torch.cat(rows) if rows else X.new_empty((0, self.classes))

    def uncertainty(self, requests: Sequence[MCRequest]) -> list[UncertaintyStats]:
        seeds = [self._seed(r) for r in requests]  # every request checked before any work
        if not self.fuse:
            return [self._mc(r, seed) for r, seed in zip(requests, seeds, strict=True)]
        answers: dict[int, UncertaintyStats] = {}
        group: list[int] = []

        def run_group() -> None:
            together = self._fused([requests[i] for i in group], [seeds[i] for i in group])
            answers.update(zip(group, together, strict=True))
            group.clear()

        rows = 0
        for i, r in enumerate(requests):
            n = r.X.shape[0] * r.samples
            if n > self.max_chunk_rows:  # alone, in chunks
                answers[i] = self._mc(r, seeds[i]).cpu()
                continue
            if rows + n > self.max_chunk_rows:
                run_group()
                rows = 0
            group.append(i)
            rows += n
        if group:
            run_group()
        return [answers[i] for i in range(len(requests))]

    @torch.inference_mode()
    def sample_logits(self, request: MCRequest) -> torch.Tensor:
        """Every pass's logits [samples, batch, classes] (divided by temperature_mc), for
        calibration and research; the same passes as uncertainty() draws for this request."""
        chunks = [torch.stack(c, 1) for c in self._passes(request, self._seed(request))]
        return torch.cat(chunks)[..., : self.classes].contiguous()

    def _seed(self, request: MCRequest) -> int:
        """The request's seed (a fresh one if it has none), once the request is checked."""
        if self.first_dropout is None:
            raise ValueError("the model has no dropout layer with p > 0: MC dropout is undefined")
        if request.X.shape[0] == 0:
            raise ValueError("a request needs at least one instance")
        if request.samples < 1:
            raise ValueError(f"samples must be at least 1, got {request.samples}")
        seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
        return seed

    def _eval(self, x: torch.Tensor) -> torch.Tensor:
        logits = forward_layers(self.linears, self.ps, self.model.embed(x), dropout=False)
        return F.softmax(logits / self.temperature_eval, dim=-1)

    def _prefix(self, X: torch.Tensor) -> torch.Tensor:
        """[batch, width]: the layers up to the first dropout, run once for all passes."""
        H = self.model.embed(X if X.device == self.device else X.to(self.device))
        for linear in self.linears[: (self.first_dropout or 0) + 1]:
            H = F.linear(H, linear.weight, linear.bias).relu_()
        return H

    @torch.inference_mode()
    def _mc(self, request: MCRequest, seed: int) -> UncertaintyStats:
        accumulators = [
            StatsAccumulator(1, self.classes, self.device) for _ in range(request.X.shape[0])
        ]
        for chunk in self._passes(request, seed):
            for acc, logits in zip(accumulators, chunk, strict=True):
                acc.add(F.softmax(logits, dim=-1)[:, None, : self.classes])  # [passes, 1, classes]
        return concat_stats([acc.finish() for acc in accumulators])

    def _passes(self, request: MCRequest, seed: int) -> Iterator[list[torch.Tensor]]:
        """The passes in chunks: each chunk one [passes, padded classes] tensor per instance
        (_padded_classes), every instance run alone through the chunk's masks. Callers run it
        in inference mode."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        X = request.X.to(self.device)
        instances = [self._active(self._prefix(X[i : i + 1])[0]) for i in range(X.shape[0])]
        for start in range(0, request.samples, self.max_chunk_rows):
            passes = min(self.max_chunk_rows, request.samples - start)
            masks = self.pass_masks.draw([passes], [generator])
            yield [self._instance_passes(*instance, masks) for instance in instances]

    def _active(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """An instance's prefix h [width] as (h, the next layer's weight, the active units).

        Units that ReLU zeroed contribute nothing in any pass: their columns (and the matching
        weight columns) are dropped. For an image that is roughly half of them. ReLU's outputs:
        nonzero is positive. None: every unit is active."""
        active = h.nonzero().view(-1)
        weight = self.tail[0][0]
        if active.numel() == h.numel():
            return h, weight, None
        inputs_dim = 1 if len(self.tail) == 1 else 0  # the last layer is [out, in]
        return h.index_select(0, active), weight.index_select(inputs_dim, active), active

    def _instance_passes(
        self,
        h: torch.Tensor,
        first_weight: torch.Tensor,
        active: torch.Tensor | None,
        masks: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """[passes, padded classes]: one instance's passes through the chunk's masks."""
        first = self.first_dropout
        assert first is not None  # _seed checked it
        # [passes, width]: the shared h broadcast into the first mask (a copy: masks are shared).
        A = masks[0] * h if active is None else masks[0].index_select(1, active).mul_(h)
        rest = iter(masks[1:])
        weights = [first_weight, *(w for w, _ in self.tail[1:])]
        for weight, (_, bias), sampler in zip(
            weights[:-1], self.tail[:-1], self.samplers[first + 1 :], strict=True
        ):
            A = torch.addmm(bias, A, weight).relu_()
            if sampler is not None:
                A.mul_(next(rest))
        return F.linear(A, weights[-1], self.tail[-1][1])

    @torch.inference_mode()
    def _fused(self, requests: Sequence[MCRequest], seeds: Sequence[int]) -> list[UncertaintyStats]:
        """The requests together (fused_passes), their statistics copied to the CPU."""
        sizes = [(r.X.shape[0], r.samples) for r in requests]
        X = torch.cat([r.X.reshape(r.X.shape[0], -1).to(self.device) for r in requests])
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        instance, passes = row_indices(sizes, self.device)
        every = self.fused_passes(X, instance, passes, sizes, generators)
        return split_requests(every, sizes)

    @torch.inference_mode()
    def fused_passes(
        self,
        X: torch.Tensor,
        instance: torch.Tensor,
        passes: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        generators: Sequence[torch.Generator],
    ) -> UncertaintyStats:
        """The device's part of fused requests, of (instances, samples) `sizes`: X [instances,
        features], and each row's instance and pass (row_indices(sizes)) on the device, and
        each request's seeded generator. [rows, width] tensors, each request's rows pass after
        pass, each pass's masks those _passes draws for the request (PassMasks). Every
        instance's statistics stay on the device (grouped_on_device), and nothing is read on
        the host: a CUDA graph can capture it (bench/engine.py)."""
        A = self._prefix(X).index_select(0, instance)
        masks = iter(self.pass_masks.draw([n for _, n in sizes], generators))
        for i, sampler in enumerate(self.samplers[self.first_dropout :]):
            if i > 0:
                weight, bias = self.tail[i - 1]
                A = torch.addmm(bias, A, weight).relu_()
            if sampler is not None:
                A.mul_(next(masks).index_select(0, passes))
        probs = F.softmax(F.linear(A, *self.tail[-1]), dim=-1)[:, : self.classes]
        return grouped_on_device(probs, instance, sizes)


def _padded_classes(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer with its classes padded to a multiple of 16 by rows of zeros and a bias of
    -inf: their logits are -inf, which softmax turns into exact zeros, and softmax over 16 classes
    runs vectorised, where over 10 it took 178 ns a row on this CPU against 33 (torch 2.13;
    1 and 2 threads give the same bits)."""
    pad = -weight.shape[0] % 16
    return (
        torch.cat([weight, weight.new_zeros(pad, weight.shape[1])]),
        torch.cat([bias, bias.new_full((pad,), -math.inf)]),
    )


def row_indices(
    sizes: Sequence[tuple[int, int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """([rows], [rows]) int64: each row's instance and pass, for requests of (instances, samples)
    `sizes` laid out request after request and pass after pass, the instances and the passes
    numbered across the requests."""
    firsts = zip(
        itertools.accumulate((b for b, _ in sizes), initial=0),
        itertools.accumulate((n for _, n in sizes), initial=0),
        strict=True,
    )
    pairs = [(i, p, b, n) for (i, p), (b, n) in zip(firsts, sizes, strict=False)]
    instance = torch.cat([torch.arange(i, i + b).repeat(n) for i, _, b, n in pairs])
    passes = torch.cat([torch.arange(p, p + n).repeat_interleave(b) for _, p, b, n in pairs])
    return instance.to(device), passes.to(device)


def engine_for(
    checkpoint: Checkpoint, max_chunk_rows: int = 8192, device: str | torch.device = "cpu"
) -> Engine:
    """The engine a checkpoint asks for, on `device`: its fitted temperatures, if it has any."""
    calibration = checkpoint.metadata.get("calibration") or {}
    return Engine(
        checkpoint.model.to(device),
        max_chunk_rows=max_chunk_rows,
        temperature_eval=float(calibration.get("temperature_eval", 1.0)),
        temperature_mc=float(calibration.get("temperature_mc", 1.0)),
    )
