"""Eval-mode prediction and the MC-dropout engine.

Rules of the design: the dropout mode is an argument of the forward pass, never module state;
layers before the first dropout run once per input; each request draws its masks from its own
generator, so a seed reproduces the answer whatever else shares the batch.

Requests run one by one on the CPU; on a GPU, where each tensor operation costs a launch of a
few microseconds whatever its size, the requests of a call run together (`fuse`): one pass
over all their rows per layer, each request's masks still drawn from its own generator, in the
same order whatever shares the call, and their statistics reduced in one go
(models.stats.grouped_on_device).

Memory: passes run in chunks of at most max(max_chunk_rows, batch) rows (a row is one instance in
one pass). A chunk holds a few float32 tensors per layer width, about
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
from models.masks import MaskSampler
from models.mlp import DropoutMLP, forward_layers
from models.stats import StatsAccumulator, UncertaintyStats, grouped_on_device, split_requests

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
        model: DropoutMLP,
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
        # The dropouts from the first on: (sampler, width); the first one's width is that of the
        # units a request leaves active (_logit_chunks), known only then.
        self.dropouts = [
            (sampler, linear.out_features)
            for sampler, linear in zip(self.samplers, self.linears, strict=False)
            if sampler is not None
        ]
        # Where they share p, one draw gives all of a chunk's masks (_chunk_masks).
        shared = {sampler for sampler, _ in self.dropouts}
        self.shared_sampler = shared.pop() if len(shared) == 1 else None
        # Constants are folded into weights once: each dropout's 1/keep into the next layer,
        # (h * m / q) W^T = (h * m) (W / q)^T, and 1/temperature into the last one. That saves
        # a pass over every masked activation and over the logits. Hidden layers' weights are
        # stored transposed, [in, out] and contiguous: dropping inactive inputs (below) then
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
        """Eval-mode class probabilities [batch, classes]."""
        with torch.inference_mode():
            logits = forward_layers(self.linears, self.ps, X.to(self.device), dropout=False)
            return F.softmax(logits / self.temperature_eval, dim=-1)

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
        logits = torch.cat(list(self._logit_chunks(request, self._seed(request))))
        return logits[..., : self.classes].contiguous()

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

    def _prefix(self, X: torch.Tensor) -> torch.Tensor:
        """[batch, width]: the layers up to the first dropout, run once for all passes."""
        H = X if X.device == self.device else X.to(self.device)
        H = H.reshape(H.shape[0], -1)
        for linear in self.linears[: (self.first_dropout or 0) + 1]:
            H = F.linear(H, linear.weight, linear.bias).relu_()
        return H

    @torch.inference_mode()
    def _mc(self, request: MCRequest, seed: int) -> UncertaintyStats:
        acc = StatsAccumulator(request.X.shape[0], self.classes, self.device)
        for logits in self._logit_chunks(request, seed):
            acc.add(F.softmax(logits, dim=-1)[..., : self.classes])  # [passes, batch, classes]
        return acc.finish()

    @torch.inference_mode()
    def _fused(self, requests: Sequence[MCRequest], seeds: Sequence[int]) -> list[UncertaintyStats]:
        """The requests together (fused_passes), their statistics copied to the CPU."""
        sizes = [(r.X.shape[0], r.samples) for r in requests]
        X = torch.cat([r.X.reshape(r.X.shape[0], -1).to(self.device) for r in requests])
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        every = self.fused_passes(X, instance_rows(sizes, self.device), sizes, generators)
        return split_requests(every, sizes)

    @torch.inference_mode()
    def fused_passes(
        self,
        X: torch.Tensor,
        instance: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        generators: Sequence[torch.Generator],
    ) -> UncertaintyStats:
        """The device's part of fused requests, of (instances, samples) `sizes`: X [instances,
        features] and instance (instance_rows(sizes)) on the device, and each request's seeded
        generator. [rows, width] tensors, each request's rows pass after pass as in
        _logit_chunks, and each one's masks from its own generator (MaskSampler.sample_rows).
        Every instance's statistics stay on the device (grouped_on_device), and nothing is read
        on the host: a CUDA graph can capture it (bench/engine.py)."""
        H = self._prefix(X)
        rows = [b * n for b, n in sizes]
        A = H.index_select(0, instance)
        for i, sampler in enumerate(self.samplers[self.first_dropout :]):
            if i > 0:
                weight, bias = self.tail[i - 1]
                A = torch.addmm(bias, A, weight).relu_()
            if sampler is not None:
                A.mul_(sampler.sample_rows(rows, A.shape[1], generators))
        probs = F.softmax(F.linear(A, *self.tail[-1]), dim=-1)[:, : self.classes]
        return grouped_on_device(probs, instance, sizes)

    def _logit_chunks(self, request: MCRequest, seed: int) -> Iterator[torch.Tensor]:
        """The passes in chunks of [passes, batch, padded classes] (_padded_classes); callers run
        it in inference mode."""
        first = self.first_dropout
        assert first is not None  # _seed checked it
        generator = torch.Generator(device=self.device).manual_seed(seed)
        H = self._prefix(request.X)
        # Units that ReLU zeroed for every instance contribute nothing in any pass: drop their
        # columns (and the matching weight columns). For one image that is roughly half of them.
        # ReLU's outputs: nonzero is positive. (One instance: its own, without a reduction.)
        active = (H.any(0) if H.shape[0] > 1 else H[0]).nonzero().view(-1)
        weights = [w for w, _ in self.tail]
        if active.numel() < H.shape[1]:
            inputs_dim = 1 if len(weights) == 1 else 0  # the last layer is [out, in]
            H, weights[0] = H.index_select(1, active), weights[0].index_select(inputs_dim, active)
        batch, width = H.shape
        per_chunk = max(1, self.max_chunk_rows // batch)
        for start in range(0, request.samples, per_chunk):
            k = min(per_chunk, request.samples - start)
            masks = iter(self._chunk_masks(k * batch, width, generator))
            # [passes, batch, width]: the shared H broadcast into the first mask, in place.
            A = next(masks).view(k, batch, width).mul_(H).view(k * batch, width)
            for weight, (_, bias), sampler in zip(
                weights[:-1], self.tail[:-1], self.samplers[first + 1 :], strict=True
            ):
                A = torch.addmm(bias, A, weight).relu_()
                if sampler is not None:
                    A.mul_(next(masks))
            yield F.linear(A, weights[-1], self.tail[-1][1]).view(k, batch, -1)

    def _chunk_masks(self, rows: int, width: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One chunk's masks [rows, width of the dropout], one per dropout from the first on (the
        first `width` wide: the units the request left active), drawn from the request's
        generator in that order. Where the dropouts share p, one mask covers them all, cut in
        views: four tensor operations fewer for two dropouts."""
        widths = [width] + [w for _, w in self.dropouts[1:]]
        if self.shared_sampler is None:
            return [
                sampler.sample((rows, w), generator)
                for (sampler, _), w in zip(self.dropouts, widths, strict=True)
            ]
        flat = self.shared_sampler.sample((rows * sum(widths),), generator)
        ends = itertools.accumulate(rows * w for w in widths)
        return [
            flat[end - rows * w : end].view(rows, w) for end, w in zip(ends, widths, strict=True)
        ]


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


def instance_rows(sizes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """[rows] int64: each row's instance, for requests of (instances, samples) `sizes` laid out
    request after request and pass after pass, the instances numbered across the requests."""
    offsets = itertools.accumulate((b for b, _ in sizes), initial=0)
    return torch.cat(
        [torch.arange(o, o + b).repeat(n) for (b, n), o in zip(sizes, offsets, strict=False)]
    ).to(device)


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
