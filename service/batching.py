"""Request batching: concurrent requests share engine calls, off the event loop.

One worker per server takes jobs from a bounded queue in arrival order. It waits up to
`batch_max_delay_ms` for more, up to `batch_max_instances` instances, then runs them in its one
inference thread:
- eval jobs of one model as one forward pass over all their instances;
- MC jobs one after another, each with its own N and generator. Merging their passes would not
  pay: for a few images each, the engine multiplies only the hidden units that are active for
  that request (about half of them for one image), and a merged pass would multiply the union,
  twice the work, and it would make a seed's numbers depend on the rest of the batch.
While the thread computes, the next requests queue up and form the next batch, so under load the
batches grow with no delay at all.

A full queue answers at once (the route says 503 with Retry-After) rather than letting latency
grow without bound; a request that waits past `request_timeout_seconds` in all gets its own
error (504) and the worker skips or discards its job.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from models.engine import Engine, MCRequest
from models.stats import UncertaintyStats
from service.observability import Metrics
from service.settings import Settings


class OverloadedError(Exception):
    """The queue is full."""


class TimedOutError(Exception):
    """The request took longer than the timeout, waiting and computing together."""


@dataclass(eq=False)
class Job:
    engine: Engine
    X: torch.Tensor
    samples: int | None  # None: eval mode
    seed: int | None
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def instances(self) -> int:
        return int(self.X.shape[0])


Resolve = Callable[[Job, Any, BaseException | None], None]


def execute(jobs: list[Job], resolve: Resolve) -> None:
    """Runs in the inference thread: eval jobs merged per model, then MC jobs, each group's
    answers handed back as soon as it is done."""
    evals: dict[int, list[Job]] = {}
    for job in jobs:
        if job.samples is None:
            evals.setdefault(id(job.engine), []).append(job)
    for group in evals.values():
        try:
            probs = group[0].engine.predict(torch.cat([job.X for job in group]))
        except Exception as e:
            for job in group:
                resolve(job, None, e)
            continue
        for job, part in zip(
            group, torch.split(probs, [job.instances for job in group]), strict=True
        ):
            resolve(job, part, None)
    for job in jobs:
        if job.samples is not None:
            try:
                (stats,) = job.engine.uncertainty([MCRequest(job.X, job.samples, job.seed)])
            except Exception as e:
                resolve(job, None, e)
            else:
                resolve(job, stats, None)


class Batcher:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.max_instances = settings.batch_max_instances
        self.max_delay = settings.batch_max_delay_ms / 1000
        self.max_queue = settings.queue_max_requests
        self.timeout = settings.request_timeout_seconds
        self.metrics = metrics
        self._queue: asyncio.Queue[Job] | None = None
        self._carry: Job | None = None  # taken from the queue, but over the last batch's limit
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._work(), name="batcher")

    async def stop(self) -> None:
        """After the server has stopped taking requests: the queue is empty by then."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def predict(self, engine: Engine, X: torch.Tensor) -> torch.Tensor:
        """Eval-mode probabilities [instances, classes]."""
        return cast(torch.Tensor, await self._submit(Job(engine, X, None, None)))

    async def uncertainty(
        self, engine: Engine, X: torch.Tensor, samples: int, seed: int | None
    ) -> UncertaintyStats:
        return cast(UncertaintyStats, await self._submit(Job(engine, X, samples, seed)))

    async def _submit(self, job: Job) -> Any:
        if self._queue is None:
            raise RuntimeError("the batcher has not been started")
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.rejected.labels("queue full").inc()
            raise OverloadedError(
                f"the queue is full ({self.max_queue} requests waiting)"
            ) from None
        self.metrics.queue_depth.set(self._queue.qsize())
        try:
            async with asyncio.timeout(self.timeout):
                return await job.future  # a timeout cancels the future: the worker skips it
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise TimedOutError(f"the request took longer than {self.timeout:g} s") from None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()

        def resolve(job: Job, result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if job.future.done():  # timed out meanwhile: nobody is waiting
                    return
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(result)

            loop.call_soon_threadsafe(settle)

        while True:
            jobs = [job for job in await self._collect() if not job.future.done()]
            if not jobs:
                continue
            for mode, part in (
                ("eval", [j for j in jobs if j.samples is None]),
                ("mc", [j for j in jobs if j.samples is not None]),
            ):
                if part:
                    self.metrics.batch_requests.labels(mode).observe(len(part))
                    self.metrics.batch_instances.labels(mode).observe(
                        sum(j.instances for j in part)
                    )
            await loop.run_in_executor(self._executor, execute, jobs, resolve)

    async def _collect(self) -> list[Job]:
        """The next batch: the first job, and whatever arrives within the delay, up to the
        instance limit (a job that would go over it starts the next batch)."""
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        first, self._carry = self._carry or await queue.get(), None
        jobs, instances = [first], first.instances
        deadline = loop.time() + self.max_delay
        while instances < self.max_instances:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if instances + job.instances > self.max_instances:
                self._carry = job
                break
            jobs.append(job)
            instances += job.instances
        self.metrics.queue_depth.set(queue.qsize())
        return jobs
