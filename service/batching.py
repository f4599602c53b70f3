"""Request batching: concurrent requests share engine calls, off the event loop.

One worker per server takes jobs from a bounded queue in arrival order. It waits up to
`batch_max_delay_ms` for more, up to `batch_max_instances` instances, then hands the batch to its
runner: the inference process (service/inference.py, the default) or one inference thread of
this process (`inference = "thread"`). Either runs `execute`:
- on a GPU, the eval jobs of one model as one forward pass over all their instances, and the
  MC jobs, each with its own N and generator, in one engine call (models/engine.py, `fuse`);
- on the CPU, each job on its own, one after another. Merged on the CPU, 32 MC requests of one
  image and N = 100 took 0.30 ms each against 0.38 ms (docs/performance.md): a gain that does
  not show over HTTP, where the server process is the limit, and merging would make an answer
  depend on the rest of the batch by float rounding (eval answers too).
While the runner computes, the next requests queue up and form the next batch, so under load
the batches grow with no delay at all.

A full queue answers at once (the route says 503 with Retry-After) rather than letting latency
grow without bound; a request that waits past `request_timeout_seconds` in all gets its own
error (504) and the worker skips or discards its job.
"""

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

from models.calibration import wilson_interval
from models.engine import Engine, MCRequest
from models.stats import UncertaintyStats
from service.observability import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


class OverloadedError(Exception):
    """The queue is full."""


class TimedOutError(Exception):
    """The request took longer than the timeout, waiting and computing together."""


class InferenceError(Exception):
    """The inference process exited (service/inference.py): its jobs have no answer."""


@dataclass(eq=False)
class Job:
    """One request's work: eval when samples is None, else MC with its own N and seed."""

    engine: Engine
    X: torch.Tensor
    samples: int | None
    seed: int | None

    @property
    def instances(self) -> int:
        return int(self.X.shape[0])

    def mc_request(self) -> MCRequest:
        assert self.samples is not None, "an eval job"
        return MCRequest(self.X, self.samples, self.seed)


@dataclass(frozen=True)
class MCAnswer:
    """An MC job's statistics as lists, an entry per instance: JSON-ready, and several times
    cheaper to pickle (service/inference.py) than tensors. See models/stats.py for each."""

    samples: int
    class_index: list[int]
    agreement: list[float]
    agreement_interval: list[list[float]]  # Wilson 95% of the winning class's vote share
    votes: list[list[int]]
    mean_probabilities: list[list[float]]
    std_probabilities: list[list[float]]
    predictive_entropy: list[float]
    expected_entropy: list[float]
    mutual_information: list[float]

    @classmethod
    def of(cls, stats: UncertaintyStats) -> "MCAnswer":
        class_index, votes = stats.class_index.tolist(), stats.votes.tolist()
        return cls(
            samples=stats.samples,
            class_index=class_index,
            agreement=stats.agreement.tolist(),
            agreement_interval=[
                list(wilson_interval(v[c], stats.samples))
                for v, c in zip(votes, class_index, strict=True)
            ],
            votes=votes,
            mean_probabilities=stats.mean_probabilities.tolist(),
            std_probabilities=stats.std_probabilities.tolist(),
            predictive_entropy=stats.predictive_entropy.tolist(),
            expected_entropy=stats.expected_entropy.tolist(),
            mutual_information=stats.mutual_information.tolist(),
        )


# Hands one job's answer (or its error) back; execute() calls it in whichever thread it runs.
Resolve = Callable[[Job, Any, BaseException | None], None]


def execute(jobs: list[Job], resolve: Resolve) -> None:
    """Runs in the inference thread, or the inference process: eval jobs, then MC jobs, each
    group's answers handed back as soon as it is done. A fusing engine (a GPU's) takes the jobs
    of each mode in one call; otherwise each job runs alone, so that its answer is the same bits
    whatever shares the batch (a matrix product's sums depend on its rows' count)."""
    evals: dict[int, list[Job]] = {}
    for job in jobs:
        if job.samples is None:
            evals.setdefault(id(job.engine) if job.engine.fuse else id(job), []).append(job)
    for group in evals.values():
        try:
            probs = group[0].engine.predict(torch.cat([job.X for job in group])).cpu()
        except Exception as e:
            for job in group:
                resolve(job, None, e)
            continue
        for job, part in zip(
            group, torch.split(probs, [job.instances for job in group]), strict=True
        ):
            resolve(job, part, None)
    mc: dict[int, list[Job]] = {}
    for job in jobs:
        if job.samples is not None:
            mc.setdefault(id(job.engine) if job.engine.fuse else id(job), []).append(job)
    for group in mc.values():
        try:
            answers = group[0].engine.uncertainty([job.mc_request() for job in group])
        except Exception as e:
            if len(group) == 1:
                resolve(group[0], None, e)
            else:  # find the job at fault: each alone
                execute(group[:1], resolve)
                execute(group[1:], resolve)
            continue
        for job, stats in zip(group, answers, strict=True):
            resolve(job, MCAnswer.of(stats), None)


@dataclass(eq=False)
class Pending:
    """A queued job and the future its request awaits."""

    job: Job
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the event loop: a future that timed out meanwhile has nobody waiting."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class InferenceThread:
    """Runs batches in one thread of this process (`inference = "thread"`)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def start(self) -> None:
        pass

    async def run(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        futures = {p.job: p.future for p in batch}

        def resolve(job: Job, result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, futures[job], result, error)

        # execute is looked up per call: tests stand in for it.
        await loop.run_in_executor(self._executor, execute, list(futures), resolve)

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)


class Runner(Protocol):
    async def start(self) -> None: ...

    async def run(self, batch: list[Pending]) -> None: ...

    async def stop(self) -> None: ...


class Batcher:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.max_instances = settings.batch_max_instances
        self.max_delay = settings.batch_max_delay_ms / 1000
        self.max_queue = settings.queue_max_requests
        self.timeout = settings.request_timeout_seconds
        self.metrics = metrics
        self._queue: asyncio.Queue[Pending] | None = None
        self._carry: Pending | None = None  # taken from the queue, but over the last batch's limit
        self._task: asyncio.Task[None] | None = None
        self.runner: Runner
        if settings.inference == "process":
            from service.inference import InferenceProcess  # here: it imports this module

            self.runner = InferenceProcess(settings)
        else:
            self.runner = InferenceThread()

    async def start(self) -> None:
        await self.runner.start()
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._work(), name="batcher")

    async def stop(self) -> None:
        """After the server has stopped taking requests: the queue is empty by then."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.runner.stop()

    async def predict(self, engine: Engine, X: torch.Tensor) -> torch.Tensor:
        """Eval-mode probabilities [instances, classes]."""
        return cast(torch.Tensor, await self._submit(Job(engine, X, None, None)))

    async def uncertainty(
        self, engine: Engine, X: torch.Tensor, samples: int, seed: int | None
    ) -> MCAnswer:
        return cast(MCAnswer, await self._submit(Job(engine, X, samples, seed)))

    async def _submit(self, job: Job) -> Any:
        if self._queue is None:
            raise RuntimeError("the batcher has not been started")
        pending = Pending(job)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.metrics.rejected.labels("queue full").inc()
            raise OverloadedError(
                f"the queue is full ({self.max_queue} requests waiting)"
            ) from None
        self.metrics.queue_depth.set(self._queue.qsize())
        try:
            async with asyncio.timeout(self.timeout):
                return await pending.future  # a timeout cancels it: the worker skips the job
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise TimedOutError(f"the request took longer than {self.timeout:g} s") from None

    async def _work(self) -> None:
        while True:
            batch = [p for p in await self._collect() if not p.future.done()]
            if not batch:
                continue
            for mode, part in (
                ("eval", [p.job for p in batch if p.job.samples is None]),
                ("mc", [p.job for p in batch if p.job.samples is not None]),
            ):
                if part:
                    self.metrics.batch_requests.labels(mode).observe(len(part))
                    self.metrics.batch_instances.labels(mode).observe(
                        sum(j.instances for j in part)
                    )
            try:
                await self.runner.run(batch)
            except Exception as e:  # the batch fails; the worker goes on with the next one
                if not isinstance(e, InferenceError):
                    log.exception("a batch failed")
                for pending in batch:
                    settle(pending.future, None, e)

    async def _collect(self) -> list[Pending]:
        """The next batch: the first job, and whatever arrives within the delay, up to the
        instance limit (a job that would go over it starts the next batch)."""
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        first, self._carry = self._carry or await queue.get(), None
        batch, instances = [first], first.job.instances
        deadline = loop.time() + self.max_delay
        while instances < self.max_instances:
            try:
                pending = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if instances + pending.job.instances > self.max_instances:
                self._carry = pending
                break
            batch.append(pending)
            instances += pending.job.instances
        self.metrics.queue_depth.set(queue.qsize())
        return batch
