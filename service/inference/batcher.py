"""Request batching: concurrent requests share engine calls, off the event loop.

One worker per server takes jobs from a bounded queue in arrival order. It waits up to
`batch_max_delay_ms` for more, up to `batch_max_instances` instances, then hands the batch to the
runner it was given: the inference process (service/inference/process.py, the default) or one
inference thread of this process (service/inference/thread.py). Either runs
service.inference.jobs.execute:
- on a GPU, the eval jobs of one model as one forward pass over all their instances, and the
  MC jobs, each with its own N and generator, in one engine call (models/engine.py, `fuse`);
- on the CPU, each job on its own, one after another: merging saves a little engine time that
  does not show over HTTP, where the server process is the limit
  (docs/performance.md#the-mc-engine-one-request), and would make an answer depend on the rest
  of the batch by float rounding.
While the runner computes, the next requests queue up and form the next batch, so under load
the batches grow with no delay at all.

A full queue answers at once (the route says 503 with Retry-After) rather than letting latency
grow without bound; a request that waits past `request_timeout_seconds` in all gets its own
error (504) and the worker skips or discards its job.
"""

import asyncio
import logging
from typing import Any, Protocol, cast

import torch

from models.engine import Engine
from service.edge.observability import Metrics
from service.inference.jobs import (
    InferenceError,
    Job,
    MCAnswer,
    OverloadedError,
    Pending,
    TimedOutError,
    settle,
)
from service.settings import Settings

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Computes batches: service/inference/process.py or service/inference/thread.py."""

    async def start(self) -> None: ...

    async def run(self, batch: list[Pending]) -> None: ...

    async def stop(self) -> None: ...


class Batcher:
    def __init__(self, settings: Settings, metrics: Metrics, runner: Runner) -> None:
        self.max_instances = settings.batch_max_instances
        self.max_delay = settings.batch_max_delay_ms / 1000
        self.max_queue = settings.queue_max_requests
        self.timeout = settings.request_timeout_seconds
        self.metrics = metrics
        self._queue: asyncio.Queue[Pending] | None = None
        self._carry: Pending | None = None  # taken from the queue, but over the last batch's limit
        self._task: asyncio.Task[None] | None = None
        self.runner = runner

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
