"""What the batcher hands its runner, and what comes back: the job types, the errors, and
`execute`, which every runner calls (service/inference/batcher.py says how). It imports nothing of
the service: the batcher and both runners import it."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from models.calibration import wilson_interval
from models.engine import Engine, MCRequest
from models.stats import UncertaintyStats


class OverloadedError(Exception):
    """The queue is full."""


class TimedOutError(Exception):
    """The request took longer than the timeout, waiting and computing together."""


class InferenceError(Exception):
    """The inference process exited (service/inference/process.py): its jobs have no answer."""


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
    cheaper to pickle (service/inference/process.py) than tensors. See models/stats.py for each."""

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
# What a runner calls with each batch: `execute`, or a test's stand-in that wraps it.
Execute = Callable[[list[Job], Resolve], None]


def groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs (of one mode) that run in one engine call: a fusing engine's together, in
    arrival order; any other job alone."""
    by_call: dict[int, list[Job]] = {}
    for job in jobs:
        by_call.setdefault(id(job.engine) if job.engine.fuse else id(job), []).append(job)
    return list(by_call.values())


def execute(jobs: list[Job], resolve: Resolve) -> None:
    """Runs in the inference thread, or the inference process: eval jobs, then MC jobs, each
    group's answers handed back as soon as it is done. A fusing engine (a GPU's) takes the jobs
    of each mode in one call; otherwise each job runs alone, so that its answer is the same bits
    whatever shares the batch (a matrix product's sums depend on its rows' count)."""
    for group in groups([job for job in jobs if job.samples is None]):
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
    for group in groups([job for job in jobs if job.samples is not None]):
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
