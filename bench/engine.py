"""Engine micro-benchmark: one MC-dropout request, ours against the usual ways of doing it.

- naive: the tutorial way, the model in train() mode (BatchNorm kept in eval) and a Python loop
  of N forwards;
- replicate: Baal's replicate-in-batch, the input repeated N times and one forward in that mode;
- baal: Baal itself where it is installed (`make bench` installs it): ModelWrapper.predict_on_batch
  with replicate_in_memory on an MCDropoutModule of the nn.Sequential form with the same weights;
- ours: models.engine.Engine.uncertainty;
- floor: the request's fp32 FLOPs at the GEMM throughput measured in the same run.
The network: --arch mlp (the chapter's 784-256-256-10, dropout 0.5/0.5) or cnn (the default
model's CNN), random weights. All of them produce the same statistics (models.stats).
Times are medians of repeated runs; each request's images start on the CPU, as a server's do,
and its statistics end there.

--device cuda runs all three on the GPU. --requests K,... adds a table of K concurrent requests
of one image and N = 100 in one engine call, as the service hands a batch to the engine (a GPU
engine fuses them, models/engine.py): ours fused and one by one, against replicate-in-batch over
all K x N rows at once (one generator for the batch: no per-request seeds) and the naive loop per
request. On a GPU it also replays ours fused from a CUDA graph captured for the K requests (one
generator per request registered with the graph, seeded before each replay), checks that the
replay answers as the fused engine does, and reads the fused kernels' own time with
torch.profiler: the part of the wall time that launching them from a graph cannot remove.
Run: .venv/bin/python bench/engine.py [--arch mlp|cnn] [--threads 1] [--quick] [--device cuda]
     [--requests 1,32,256]
"""

import argparse
import copy
import itertools
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from models.cnn import CNNConfig, DropoutCNN
from models.engine import Engine, MCRequest, row_indices
from models.mlp import MLPConfig
from models.networks import Config, Network, build_model
from models.stats import UncertaintyStats, split_requests, summarize

# The CNN: the default model's network (training.train's CNN recipe).
ARCHS: dict[str, Config] = {"mlp": MLPConfig(), "cnn": CNNConfig(convs_per_block=2)}


def mc_mode(model: Network) -> Network:
    """The model with dropout on and everything else (BatchNorm) in eval behaviour."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def naive(model: Network, X: torch.Tensor, n: int) -> UncertaintyStats:
    mc_mode(model)
    X = X.to(DEVICE)
    with torch.no_grad():
        probs = torch.stack([F.softmax(model(X), dim=-1) for _ in range(n)])
    return summarize(probs).cpu()


def replicate(model: Network, X: torch.Tensor, n: int) -> UncertaintyStats:
    mc_mode(model)
    X = X.to(DEVICE)
    with torch.no_grad():
        logits = model(X.repeat(n, 1)).view(n, X.shape[0], -1)
    return summarize(F.softmax(logits, dim=-1)).cpu()


def sequential(model: Network) -> nn.Sequential:
    """The model as an nn.Sequential with nn.Dropout modules, the form Baal patches: the same
    modules before the dense layers (copies), then the dense layers with the same weights."""
    dense = model.layers()
    blocks: list[nn.Module] = []
    if isinstance(model, DropoutCNN):
        shape = model.config.input_shape
        blocks += [nn.Unflatten(1, shape), copy.deepcopy(model.features)]
    blocks.append(nn.Flatten())
    for linear, p in zip(dense[:-1], model.config.dropout, strict=True):
        blocks += [copy.deepcopy(linear), nn.ReLU(), nn.Dropout(p)]
    blocks.append(copy.deepcopy(dense[-1]))
    return nn.Sequential(*blocks).to(DEVICE)


def baal_predictor(model: Network) -> Callable[[torch.Tensor, int], UncertaintyStats] | None:
    """Baal's own MC dropout on a copy of the model, or None where Baal is not installed."""
    try:
        from baal.bayesian.dropout import MCDropoutModule
        from baal.modelwrapper import ModelWrapper, TrainingArgs
    except ImportError:
        return None
    # MCDropoutModule keeps nn.Dropout modules on: the nn.Sequential form, the same weights.
    args = TrainingArgs(use_cuda=DEVICE.type == "cuda", replicate_in_memory=True)
    wrapper = ModelWrapper(MCDropoutModule(sequential(model)), args)

    def predict(X: torch.Tensor, n: int) -> UncertaintyStats:
        logits = wrapper.predict_on_batch(X.to(DEVICE), iterations=n)  # [batch, classes, n]
        return summarize(F.softmax(logits.permute(2, 0, 1), dim=-1)).cpu()

    return predict


def seconds(fn: Callable[[], object], budget: float) -> float:
    fn()  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 1000):
        start = time.perf_counter()
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_flops_per_second() -> float:
    a, b = torch.rand(8192, 256, device=DEVICE), torch.rand(256, 256, device=DEVICE)
    return 2 * 8192 * 256 * 256 / seconds(lambda: a @ b, 1.0)


def kernel_seconds(fn: Callable[[], object], repeats: int = 20) -> float:
    """The GPU kernels' summed time per call of fn, by torch.profiler (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    return float(sum(e.self_device_time_total for e in prof.key_averages())) / 1e6 / repeats


def request_flops(config: Config, batch: int, n: int) -> float:
    # Ours runs the convolutions and the first dense layer once per instance, the others once
    # per pass.
    sizes = config.sizes
    first = 2 * batch * sizes[0] * sizes[1]
    rest = sum(2 * batch * n * i * o for i, o in itertools.pairwise(sizes[1:]))
    return conv_flops(config) * batch + first + rest


def conv_flops(config: Config) -> float:
    """One image's 3x3 convolutions (a CNN's); pools and BatchNorm left out."""
    if not isinstance(config, CNNConfig):
        return 0.0
    flops, side, cin = 0.0, config.height * config.width, config.in_channels
    for cout in config.channels:
        for i in range(config.convs_per_block):
            flops += 2 * side * 9 * (cin if i == 0 else cout) * cout
        side, cin = side // 4, cout
    return flops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="B=1, N=100 only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--requests", default="", help="K,...: concurrent requests in one call")
    parser.add_argument("--arch", choices=list(ARCHS), default="mlp", help="the default network")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ARCHS[args.arch]
    model = build_model(config).to(DEVICE)
    engine = Engine(copy.deepcopy(model))
    peak = gemm_flops_per_second()
    cases = [(1, 100)] if args.quick else [(b, n) for b in (1, 32, 256) for n in (10, 100, 1000)]
    where = (
        torch.cuda.get_device_name(DEVICE)
        if DEVICE.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"{where}, torch {torch.__version__}, {args.threads} CPU thread(s), "
        f"fp32 GEMM {peak / 1e9:.0f} GFLOP/s; {args.arch}: {config}"
    )
    baal = baal_predictor(model)
    if baal is None:
        print("Baal is not installed: its columns stay empty (make bench installs it)")
    print(
        "| B | N | naive ms | replicate ms | Baal ms | ours ms | floor ms | naive/ours | "
        "replicate/ours | Baal/ours | ours/floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, n in cases:
        print(row(model, engine, baal, config, peak, batch, n))
    if args.requests:
        concurrent(model, [int(k) for k in args.requests.split(",")])


def row(
    model: Network,
    engine: Engine,
    baal: Callable[[torch.Tensor, int], UncertaintyStats] | None,
    config: Config,
    peak: float,
    batch: int,
    n: int,
) -> str:
    X = torch.rand(batch, config.num_inputs)
    budget = 2.0 if batch * n <= 3200 else 4.0
    t_naive = seconds(lambda: naive(model, X, n), budget)
    t_rep = seconds(lambda: replicate(model, X, n), budget)
    t_baal = seconds(lambda: baal(X, n), budget) if baal is not None else None
    t_ours = seconds(lambda: engine.uncertainty([MCRequest(X, n, 0)]), budget)
    floor = request_flops(config, batch, n) / peak
    baal_ms, baal_ratio = (
        (f"{t_baal * 1e3:.3f}", f"{t_baal / t_ours:.1f}") if t_baal is not None else ("", "")
    )
    return (
        f"| {batch} | {n} | {t_naive * 1e3:.3f} | {t_rep * 1e3:.3f} | {baal_ms} | "
        f"{t_ours * 1e3:.3f} | {floor * 1e3:.4f} | {t_naive / t_ours:.1f} | "
        f"{t_rep / t_ours:.1f} | {baal_ratio} | {t_ours / floor:.1f} |"
    )


def concurrent(model: Network, counts: list[int], n: int = 100) -> None:
    fused, alone = (Engine(copy.deepcopy(model), fuse=f) for f in (True, False))
    gpu = DEVICE.type == "cuda"
    print(f"\nK concurrent requests of one image, N = {n}, in one call: microseconds per request")
    columns = [
        "K",
        "naive",
        "replicate, one generator",
        "ours, one by one",
        "ours, fused",
        "naive/fused",
        "requests/s, fused",
    ]
    if gpu:
        columns += ["fused, CUDA graph", "requests/s, graph", "graph = fused"]
        columns += ["fused: kernels' time"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for k in counts:
        print(concurrent_row(model, fused, alone, k, n))


def concurrent_row(model: Network, fused: Engine, alone: Engine, k: int, n: int) -> str:
    X = torch.rand(k, model.config.num_inputs)
    seeds = list(range(k))
    requests = [MCRequest(X[i : i + 1], n, seeds[i]) for i in range(k)]
    t_naive = seconds(lambda: [naive(model, X[i : i + 1], n) for i in range(k)], 2.0)
    t_rep = seconds(lambda: replicate(model, X, n), 2.0)
    t_alone = seconds(lambda: alone.uncertainty(requests), 2.0)
    t_fused = seconds(lambda: fused.uncertainty(requests), 2.0)
    line = (
        f"| {k} | {t_naive / k * 1e6:.1f} | {t_rep / k * 1e6:.1f} | {t_alone / k * 1e6:.1f} | "
        f"{t_fused / k * 1e6:.1f} | {t_naive / t_fused:.1f} | {k / t_fused:,.0f} |"
    )
    if DEVICE.type == "cuda":
        try:
            replay = graphed(fused, k, n)
            t_graph = seconds(lambda: replay(X, seeds), 2.0)
            line += f" {t_graph / k * 1e6:.1f} | {k / t_graph:,.0f} | "
            # After those replays, other images and seeds: the graph's copy and seeding work.
            Y, others = torch.rand(k, X.shape[1]), [k + s for s in seeds]
            eager = fused.uncertainty([MCRequest(Y[i : i + 1], n, others[i]) for i in range(k)])
            line += same_answers(replay(Y, others), eager) + " |"
        except Exception as e:  # report it in the table: the other columns still count
            reason = (str(e).splitlines() or [""])[0][:160].replace("|", "/")
            line += f" failed: {type(e).__name__}: {reason} | | |"
        line += f" {kernel_seconds(lambda: fused.uncertainty(requests)) / k * 1e6:.1f} |"
    return line


def graphed(
    engine: Engine, k: int, n: int
) -> Callable[[torch.Tensor, list[int]], list[UncertaintyStats]]:
    """Ours fused for k requests of one image and n passes, from one CUDA graph: a call copies
    the images [k, features] into the graph's input, seeds each request's generator, replays
    the graph and copies the statistics to the CPU (models.stats.split_requests)."""
    sizes = [(1, n)] * k
    X = torch.zeros(k, engine.model.config.num_inputs, device=engine.device)
    instance, passes = row_indices(sizes, engine.device)
    generators = [torch.Generator(engine.device) for _ in range(k)]
    graph = torch.cuda.CUDAGraph()
    for generator in generators:  # the graph reads their seeds and offsets at each replay
        graph.register_generator_state(generator)
    # Warm-up off the default stream, as torch.cuda.graph's docs ask.
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            engine.fused_passes(X, instance, passes, sizes, generators)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        every = engine.fused_passes(X, instance, passes, sizes, generators)

    # The graph reads its inputs' memory at each replay: all three must live as long as it does
    # (a freed `instance` was reused by later tensors, and the replays gathered out of bounds).
    inputs = (X, instance, passes)

    def replay(images: torch.Tensor, seeds: list[int]) -> list[UncertaintyStats]:
        inputs[0].copy_(images)
        for generator, seed in zip(generators, seeds, strict=True):
            generator.manual_seed(seed)
        graph.replay()
        return split_requests(every, sizes)

    return replay


def same_answers(got: list[UncertaintyStats], want: list[UncertaintyStats]) -> str:
    """Whether two runs of the same requests gave the same votes (the same masks), and the
    largest difference of their mean probabilities (summation order)."""
    votes = all(torch.equal(a.votes, b.votes) for a, b in zip(got, want, strict=True))
    gap = max(
        float((a.mean_probabilities - b.mean_probabilities).abs().max())
        for a, b in zip(got, want, strict=True)
    )
    return f"{'same votes' if votes else 'OTHER VOTES'}, mean within {gap:.0e}"


DEVICE = torch.device("cpu")


if __name__ == "__main__":
    main()
