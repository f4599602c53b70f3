"""The runner that computes batches in one thread of this process (`inference = "thread"`)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.inference.jobs import Execute, Job, Pending, execute, settle


class InferenceThread:
    """Runs batches in one thread of this process, with `execute` or what stands in for it."""

    def __init__(self, execute: Execute = execute) -> None:
        self._execute = execute
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def start(self) -> None:
        pass

    async def run(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        futures = {p.job: p.future for p in batch}

        def resolve(job: Job, result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, futures[job], result, error)

        await loop.run_in_executor(self._executor, self._execute, list(futures), resolve)

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)
