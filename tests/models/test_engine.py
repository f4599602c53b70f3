import copy
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models.checkpoint import load_checkpoint, save_checkpoint
from models.engine import MAX_SEED, Engine, MCRequest, engine_for
from models.mlp import DropoutMLP, MLPConfig, Variant, build_model
from models.stats import UncertaintyStats

SMALL = MLPConfig(hidden=(32, 16), dropout=(0.5, 0.3))


def make_model(config: MLPConfig = SMALL, variant: Variant = "scratch") -> DropoutMLP:
    torch.manual_seed(0)
    model = build_model(replace(config, variant=variant))
    with torch.no_grad():
        for linear in model.layers():
            linear.weight.mul_(3)  # sharper outputs, so that dropout visibly moves them
    return model


# How the engine runs: per request on the CPU, requests fused (the GPU's way) on the CPU, and
# on a GPU where there is one (never in CI).
KINDS = [
    "cpu",
    "cpu-fused",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
FUSED = KINDS[1:]


def make_engine(model: DropoutMLP, kind: str, max_chunk_rows: int = 8192) -> Engine:
    if kind == "cuda":
        return Engine(model.to("cuda"), max_chunk_rows=max_chunk_rows)  # fuses by default
    return Engine(model, max_chunk_rows=max_chunk_rows, fuse=kind == "cpu-fused")


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 784, generator=torch.Generator().manual_seed(seed))


def assert_stats_equal(a: UncertaintyStats, b: UncertaintyStats) -> None:
    for f in fields(UncertaintyStats):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f.name


def assert_valid(s: UncertaintyStats, batch: int, samples: int) -> None:
    assert s.samples == samples
    assert s.votes.shape == (batch, 10)
    assert torch.equal(s.votes.sum(-1), torch.full((batch,), samples))
    torch.testing.assert_close(s.mean_probabilities.sum(-1), torch.ones(batch, dtype=torch.float64))


@pytest.mark.parametrize("variant", ["scratch", "concise"])
def test_predict_is_softmax_of_eval_forward(variant: Variant) -> None:
    model = make_model(variant=variant)
    engine = Engine(model)
    X = images(6).reshape(6, 1, 28, 28)
    probs = engine.predict(X)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    with torch.no_grad():
        # Each instance alone (models/engine.py): the rows of one batched product may differ.
        alone = torch.cat([torch.softmax(model(x[None]), dim=-1) for x in X])
        assert torch.equal(probs, alone)


@pytest.mark.parametrize("kind", KINDS)
def test_mc_requests_never_touch_module_state(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    engine = make_engine(make_model(), kind)
    model = engine.model
    X = images(4).to(engine.device)
    with torch.no_grad():
        before, predicted = model(X), engine.predict(X)
    modes = [m.training for m in model.modules()]
    calls: list[bool] = []
    original = nn.Module.train

    def spy(self: nn.Module, mode: bool = True) -> nn.Module:
        calls.append(mode)
        return original(self, mode)

    monkeypatch.setattr(nn.Module, "train", spy)
    engine.uncertainty([MCRequest(X, 50, 1), MCRequest(images(2, 5), 7, None)])
    assert calls == []
    assert [m.training for m in model.modules()] == modes
    assert not any(modes)
    with torch.no_grad():
        assert torch.equal(model(X), before)
    assert torch.equal(engine.predict(X), predicted)


def test_seed_reproduces_stats_whatever_shares_the_list() -> None:
    engine = Engine(make_model(), max_chunk_rows=64)
    request = MCRequest(images(3), 40, 123)
    (alone,) = engine.uncertainty([request])
    assert_valid(alone, 3, 40)
    others = [MCRequest(images(5, 2), 17, 9), MCRequest(images(1, 3), 90, None)]
    for position in range(3):
        batch = [*others[:position], request, *others[position:]]
        assert_stats_equal(engine.uncertainty(batch)[position], alone)
    (other_seed,) = engine.uncertainty([MCRequest(images(3), 40, 124)])
    assert not torch.equal(other_seed.mean_probabilities, alone.mean_probabilities)


@pytest.mark.parametrize("kind", FUSED)
def test_fused_requests_keep_their_own_masks_whatever_shares_the_call(kind: str) -> None:
    engine = make_engine(make_model(), kind)
    assert engine.fuse
    request = MCRequest(images(3), 40, 123)
    (alone,) = engine.uncertainty([request])
    assert_valid(alone, 3, 40)
    assert alone.mean_probabilities.device.type == "cpu"  # statistics come back on the CPU
    others = [MCRequest(images(5, 2), 17, 9), MCRequest(images(1, 3), 90, None)]
    for position in range(3):
        batch = [*others[:position], request, *others[position:]]
        together = engine.uncertainty(batch)
        for s, r in zip(together, batch, strict=True):
            assert_valid(s, r.X.shape[0], r.samples)
        # The same masks: the same votes; float sums differ by rounding with the GEMMs' shapes.
        assert torch.equal(together[position].votes, alone.votes)
        for f in fields(UncertaintyStats):
            value = getattr(alone, f.name)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                got = getattr(together[position], f.name)
                torch.testing.assert_close(got, value, rtol=0, atol=1e-5, msg=f.name)


def test_fused_groups_stay_within_max_chunk_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(make_model(), "cpu-fused", max_chunk_rows=100)
    rows: list[int] = []
    real_addmm = torch.addmm

    def spy_addmm(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        rows.append(x.shape[0])
        return real_addmm(b, x, w)

    monkeypatch.setattr(torch, "addmm", spy_addmm)
    # 40 + 40 rows share a group, 30 more would pass 100: a second group; 2 x 150 rows are
    # over the limit alone: each instance alone, in chunks of 100 passes (100, then 50).
    sizes = [(1, 40), (2, 20), (3, 10), (2, 150), (1, 5)]
    requests = [MCRequest(images(b, i), n, i) for i, (b, n) in enumerate(sizes)]
    answers = engine.uncertainty(requests)
    for s, (b, n) in zip(answers, sizes, strict=True):
        assert_valid(s, b, n)
    assert rows == [80, 100, 100, 50, 50, 35]


def test_answers_do_not_depend_on_the_thread_count() -> None:
    # The inference process and a server thread run different thread counts
    # (service/inference/process.py) and must answer alike, bit for bit: MKL's products and
    # torch's softmax over some layouts would not (docs/performance.md, "Tried and dropped").
    engine = Engine(make_model(MLPConfig()))  # the chapter's sizes: 10 classes, padded to 16
    X, requests = images(3), [MCRequest(images(3), 300, 4), MCRequest(images(1, 2), 100, 5)]
    before = torch.get_num_threads()
    answers, predictions = [], []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            answers.append(engine.uncertainty(requests))
            predictions.append(engine.predict(X))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*answers, strict=True):
        assert_stats_equal(one, two)
    assert torch.equal(*predictions)


def test_seed_none_draws_a_fresh_seed() -> None:
    engine = Engine(make_model())
    a, b = engine.uncertainty([MCRequest(images(2), 30), MCRequest(images(2), 30)])
    assert_valid(a, 2, 30)
    assert_valid(b, 2, 30)
    assert not torch.equal(a.mean_probabilities, b.mean_probabilities)


def _standard_errors(a: torch.Tensor, b: torch.Tensor, n_a: int, n_b: int) -> torch.Tensor:
    """Standard error of the difference of two independent means, from their population stds."""
    return (a**2 / n_a + b**2 / n_b).sqrt()


def test_chunk_size_changes_nothing_but_the_random_stream() -> None:
    n, X = 1500, images(2)
    (tiny,) = Engine(make_model(), max_chunk_rows=1).uncertainty([MCRequest(X, n, 5)])
    (large,) = Engine(make_model(), max_chunk_rows=100_000).uncertainty([MCRequest(X, n, 5)])
    assert_valid(tiny, 2, n)
    assert_valid(large, 2, n)
    # Two independent n-pass means: agree within 5 standard errors of their difference.
    se = _standard_errors(tiny.std_probabilities, large.std_probabilities, n, n)
    assert ((tiny.mean_probabilities - large.mean_probabilities).abs() <= 5 * se + 1e-9).all()


@pytest.mark.parametrize(
    ("config", "variant"),
    [
        (SMALL, "scratch"),
        (SMALL, "concise"),
        (MLPConfig(hidden=(32, 16), dropout=(0.0, 0.5)), "scratch"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_naive_train_mode_loop(config: MLPConfig, variant: Variant, kind: str) -> None:
    n, X = 4000, images(3)
    model = make_model(config, variant)
    reference = copy.deepcopy(model).train()
    torch.manual_seed(11)
    with torch.no_grad():
        naive = torch.stack([torch.softmax(reference(X), -1) for _ in range(n)]).double()
    engine = make_engine(copy.deepcopy(model), kind, max_chunk_rows=1000)
    (s,) = engine.uncertainty([MCRequest(X, n, 3)])
    assert_valid(s, 3, n)
    # Independent means of n passes each; 30 entries at 5 SE each fail by chance with p ~ 2e-5.
    sd = naive.std(0, unbiased=False)
    se = _standard_errors(s.std_probabilities, sd, n, n)
    assert ((s.mean_probabilities - naive.mean(0)).abs() <= 5 * se + 1e-9).all()
    # The stds too: by the delta method a sample std has variance (m4 - sd^4) / (4 sd^2 n), with
    # m4 the fourth central moment; the difference of two such stds has twice that.
    m4 = ((naive - naive.mean(0)) ** 4).mean(0)
    se_sd = (2 * (m4 - sd**4) / (4 * sd**2 * n)).sqrt()
    assert ((s.std_probabilities - sd).abs() <= 5 * se_sd + 1e-9).all()
    # The tolerance has power: the MC mean is many standard errors away from the eval prediction.
    eval_gap = (s.mean_probabilities - engine.predict(X).cpu().double()).abs() / (se + 1e-12)
    assert eval_gap.max() > 10


@pytest.mark.parametrize(("samples", "max_chunk_rows"), [(1, 8192), (10, 8192), (10, 9), (25, 1)])
@pytest.mark.parametrize("dropout", [(0.5, 0.3), (0.0, 0.5)])
def test_deterministic_prefix_runs_once(
    samples: int, max_chunk_rows: int, dropout: tuple[float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = 3
    model = make_model(MLPConfig(hidden=(32, 16), dropout=dropout))
    engine = Engine(model, max_chunk_rows=max_chunk_rows)
    calls: list[tuple[int, int]] = []  # (rows, out_features) of every linear layer run
    real_linear = F.linear

    def spy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        calls.append((x.shape[0], w.shape[0]))
        return real_linear(x, w, b)

    real_addmm = torch.addmm  # hidden layers after the first dropout: weights are [in, out]

    def spy_addmm(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], w.shape[1]))
        return real_addmm(b, x, w)

    monkeypatch.setattr(F, "linear", spy)
    monkeypatch.setattr(torch, "addmm", spy_addmm)
    engine.uncertainty([MCRequest(images(batch), samples, 0)])
    layers = model.layers()
    first = dropout.index(next(p for p in dropout if p > 0))
    # Layers up to the one the first dropout follows run once per instance, each alone ...
    prefix = [(1, linear.out_features) for linear in layers[: first + 1]]
    assert calls[: batch * (first + 1)] == prefix * batch
    # ... the rest once per chunk of passes and instance, max_chunk_rows passes at most.
    tail, rest = calls[batch * (first + 1) :], layers[first + 1 :]
    # (the last layer's classes padded to 16: models.engine._padded_classes)
    widths = [linear.out_features for linear in rest[:-1]] + [16]
    chunks = [min(max_chunk_rows, samples - s) for s in range(0, samples, max_chunk_rows)]
    assert tail == [(k, width) for k in chunks for _ in range(batch) for width in widths]


def row(s: UncertaintyStats, i: int) -> UncertaintyStats:
    """Instance i's statistics, as a batch of one."""
    return replace(
        s, **{f.name: getattr(s, f.name)[i : i + 1] for f in fields(s) if f.name != "samples"}
    )


# Where every instance runs alone: the CPU, and a GPU that does not fuse requests.
ALONE = [
    "cpu",
    pytest.param(
        "cuda-alone", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
    ),
]


def alone_engine(model: DropoutMLP, kind: str, max_chunk_rows: int = 8192) -> Engine:
    device = "cuda" if kind == "cuda-alone" else "cpu"
    return Engine(model.to(device), max_chunk_rows=max_chunk_rows, fuse=False)


@pytest.mark.parametrize("kind", ALONE)
@pytest.mark.parametrize(
    "config", [SMALL, MLPConfig(), MLPConfig(hidden=(32, 16), dropout=(0.0, 0.5))]
)
def test_an_answer_is_the_same_alone_at_any_position_and_in_any_company(
    kind: str, config: MLPConfig
) -> None:
    # An answer is a function of (checkpoint, input, N, seed): the same bits alone, at every
    # position of a request, beside other requests, and whatever the chunks of passes.
    engine = alone_engine(make_model(config), kind, max_chunk_rows=16)
    x, others = images(1, 40), images(7, 41)
    alone_eval = engine.predict(x)
    (alone,) = engine.uncertainty([MCRequest(x, 50, 77)])
    for position in (0, 3, 7):
        X = torch.cat([others[:position], x, others[position:]])
        assert torch.equal(engine.predict(X)[position : position + 1], alone_eval)
        neighbours = [MCRequest(images(2, 42), 30, 5), MCRequest(others, 50, 77)]
        answers = engine.uncertainty([neighbours[0], MCRequest(X, 50, 77), neighbours[1]])
        assert_stats_equal(row(answers[1], position), alone)
    # The chunks of passes do not matter either: the passes are drawn pass after pass.
    (one_chunk,) = alone_engine(make_model(config), kind).uncertainty([MCRequest(x, 50, 77)])
    assert torch.equal(one_chunk.votes, alone.votes)
    # The test has power: another seed, or another N, changes the answer.
    (other,) = engine.uncertainty([MCRequest(x, 50, 78)])
    assert not torch.equal(other.mean_probabilities, alone.mean_probabilities)


def test_passes_are_shared_sub_networks() -> None:
    # Pass t is one sub-network for all the instances of a request: two copies of an image in
    # one request get the same passes, where independent masks would give them different ones.
    engine = Engine(make_model())
    x = images(1, 50)
    passes = engine.sample_logits(MCRequest(torch.cat([x, images(1, 51), x]), 30, 9))
    assert torch.equal(passes[:, 0], passes[:, 2])
    assert not torch.equal(passes[:, 0], passes[:, 1])


def test_model_without_dropout_refuses_mc() -> None:
    engine = Engine(make_model(MLPConfig(hidden=(32, 16), dropout=(0.0, 0.0))))
    assert not engine.supports_mc
    assert Engine(make_model()).supports_mc
    with pytest.raises(ValueError, match="dropout"):
        engine.uncertainty([MCRequest(images(1), 10, 0)])


@pytest.mark.parametrize(
    ("samples", "seed", "message"),
    [
        (0, 0, "samples must be at least 1, got 0"),
        (-3, 0, "samples must be at least 1"),
        (10, -1, "seed must be in"),
        (10, MAX_SEED + 1, "seed must be in"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_request_raises(samples: int, seed: int, message: str, kind: str) -> None:
    engine = make_engine(make_model(), kind)
    good = MCRequest(images(1), 5, 0)
    with pytest.raises(ValueError, match=message):
        engine.uncertainty([good, MCRequest(images(1), samples, seed)])


def test_largest_seed_is_accepted() -> None:
    (s,) = Engine(make_model()).uncertainty([MCRequest(images(1), 5, MAX_SEED)])
    assert_valid(s, 1, 5)


def test_bad_chunk_size_raises() -> None:
    with pytest.raises(ValueError, match="max_chunk_rows must be at least 1"):
        Engine(make_model(), max_chunk_rows=0)


def test_temperatures_divide_the_logits_of_each_mode(tmp_path: Path) -> None:
    model = make_model()
    X = images(5)
    raw = Engine(copy.deepcopy(model))
    tempered = Engine(copy.deepcopy(model), temperature_eval=2.0, temperature_mc=0.5)
    with torch.no_grad():
        logits = model.eval()(X)
    torch.testing.assert_close(tempered.predict(X), torch.softmax(logits / 2.0, dim=-1))
    request = MCRequest(X, 20, 9)
    passes = raw.sample_logits(request)
    assert passes.shape == (20, 5, 10)  # the classes, not the engine's padding of them
    assert passes.isfinite().all()
    torch.testing.assert_close(tempered.sample_logits(request), passes / 0.5, rtol=1e-5, atol=1e-5)
    # The statistics are those of the tempered passes.
    stats = tempered.uncertainty([request])[0]
    expected = torch.softmax(raw.sample_logits(request).double() / 0.5, dim=-1).mean(0)
    torch.testing.assert_close(stats.mean_probabilities, expected, rtol=1e-5, atol=1e-6)

    path = tmp_path / "m.safetensors"
    save_checkpoint(
        path,
        model,
        [str(i) for i in range(10)],
        {"calibration": {"temperature_eval": 2.0, "temperature_mc": 0.5}},
    )
    from_file = engine_for(load_checkpoint(path))
    assert (from_file.temperature_eval, from_file.temperature_mc) == (2.0, 0.5)
    save_checkpoint(path, model, [str(i) for i in range(10)], {})
    assert engine_for(load_checkpoint(path)).temperature_mc == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="temperature_mc must be a positive number"):
        Engine(make_model(), temperature_mc=bad)
