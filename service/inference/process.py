"""The engines in a process of their own: `inference = "process"`, the default.

In one process the event loop (HTTP, JSON, answers) and an inference thread share the GIL. An MC
request is a few dozen small torch operations; each gives the GIL back and waits to take it
again, and under load those hand-offs cost more than the arithmetic (the server's CPU per
uncertainty request against the engine's alone: docs/performance.md#workers-and-threads).
Here the server process only moves bytes: its event loop writes each batch to a child process
and reads the answers back, with no second thread. The child runs
service.inference.jobs.execute on the other core, answering each job as soon as it is done.

Wire: a message is its length (8 bytes, little-endian) and a pickle. Only this server's two
processes ever read it. To the child: ("engine", key, engine, forgotten keys) and
("batch", [(key, X, samples, seed), ...]); from it: ("ready",), ("result", index, value, error)
and ("done",). Closing the pipe to the child stops it; if the child dies, the jobs in flight fail
with InferenceError (503) and the next batch starts a new one. A child that stays busy with a
batch after all its requests have timed out is killed.
"""

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import IO, Any

import numpy as np
import torch

from models.engine import Engine
from service.edge.observability import configure_logging
from service.inference.jobs import InferenceError, Job, Pending, execute, settle
from service.settings import Settings

log = logging.getLogger(__name__)
START_TIMEOUT = 120.0  # seconds for the child to import torch and say ready
STOP_TIMEOUT = 10.0
CHILD_IGNORES = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(8, "little") + payload


def to_wire(value: Any) -> Any:
    """Tensors as numpy arrays, which pickle several times faster."""
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else value


def from_wire(value: Any) -> Any:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def wire_error(error: BaseException | None) -> BaseException | None:
    """The error itself when it pickles (ValueError and the like), else its text."""
    if error is None:
        return None
    try:
        pickle.dumps(error)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def default_torch_threads() -> int:
    """The inference process's torch threads: the cores it may use less the event loop's one, at
    most 4. torch's default of a thread per core makes the two processes fight over the cores,
    and on many cores idle threads spin: more threads served fewer requests
    (docs/performance.md#workers-and-threads)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


def serve(inbox: Connection, outbox: Connection, settings: Settings) -> None:
    """The child process: registers engines, runs batches, until the server closes the pipe."""
    # Ctrl-C in a terminal and systemd's stop signal the whole process group, and SIGHUP is the
    # server's reload: none is for this process, which the server stops by closing the pipe once
    # its requests have drained. They were blocked since before it started (InferenceProcess).
    for sig in CHILD_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_IGNORES)
    configure_logging(settings.log_level)
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    reader: IO[bytes] = open(inbox.fileno(), "rb", closefd=False)  # noqa: SIM115
    writer: IO[bytes] = open(outbox.fileno(), "wb", closefd=False)  # noqa: SIM115

    def send(message: Any) -> None:
        writer.write(frame(message))
        writer.flush()

    engines: dict[int, Engine] = {}
    send(("ready",))
    while len(header := reader.read(8)) == 8:
        message = pickle.loads(reader.read(int.from_bytes(header, "little")))
        if message[0] == "engine":
            _, key, engine, forgotten = message
            for old in forgotten:
                engines.pop(old, None)
            engines[key] = engine.to(settings.device)
        elif message[0] == "batch":
            items = message[1]
            run_batch([Job(engines[k], torch.from_numpy(X), n, s) for k, X, n, s in items], send)


def run_batch(jobs: list[Job], send: Callable[[Any], None]) -> None:
    index = {job: i for i, job in enumerate(jobs)}

    def resolve(job: Job, result: Any, error: BaseException | None) -> None:
        if error is not None:
            log.error("inference failed", exc_info=error)
        send(("result", index[job], to_wire(result), wire_error(error)))

    execute(jobs, resolve)
    send(("done",))


class Frames(asyncio.Protocol):
    """Reads the child's messages on the event loop."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self.on_message, self.on_lost = on_message, on_lost
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 8:
            end = 8 + int.from_bytes(self.buffer[:8], "little")
            if len(self.buffer) < end:
                return
            message = pickle.loads(self.buffer[8:end])
            del self.buffer[:end]
            self.on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()


class InferenceProcess:
    """The batcher's runner that sends batches to a child process (see the module's text)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: BaseProcess | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._reader: asyncio.ReadTransport | None = None
        self._ready: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._batch: list[Pending] = []
        self._keys: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
        self._registered: set[int] = set()
        self._next_key = 0
        self._alive = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        child_inbox, to_child = context.Pipe(duplex=False)
        from_child, child_outbox = context.Pipe(duplex=False)
        self.process = context.Process(
            target=serve,
            args=(child_inbox, child_outbox, self.settings),
            name="mcdropout-inference",
            daemon=True,
        )
        # Blocked in this thread while the child is made, it inherits them blocked: a signal
        # sent before it ignores them waits, and is then dropped, rather than killing it. Here
        # the signal is delivered once unblocked.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_IGNORES)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child_inbox.close()  # the child's ends: its exit must close the pipes
        child_outbox.close()
        self._ready = loop.create_future()
        self._keys, self._registered = weakref.WeakKeyDictionary(), set()
        self._alive = True
        self._reader, _ = await loop.connect_read_pipe(
            lambda: Frames(self._receive, self._lost), from_child
        )
        self._writer, _ = await loop.connect_write_pipe(asyncio.Protocol, to_child)
        await asyncio.wait_for(self._ready, START_TIMEOUT)
        log.info("inference process %s ready", self.process.pid)

    async def run(self, batch: list[Pending]) -> None:
        if not self._alive:
            await self.start()
        assert self._writer is not None
        self._batch, self._done = batch, asyncio.get_running_loop().create_future()
        jobs = [p.job for p in batch]
        items = [(self._key(j.engine), j.X.numpy(), j.samples, j.seed) for j in jobs]
        self._writer.write(frame(("batch", items)))
        # Each job gives up after request_timeout_seconds (504). A child still on the batch after
        # every one of its jobs gave up is wedged: it is killed (its exit settles the batch) and
        # the next batch starts a new one, rather than every later request timing out too.
        while not self._done.done():
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._done), self.settings.request_timeout_seconds
                )
            except TimeoutError:
                abandoned = all(p.future.done() for p in batch) and not self._done.done()
                if abandoned and self.process is not None:
                    log.error("inference process %s: batch abandoned; killing it", self.process.pid)
                    self.process.kill()
                    await self._done

    async def stop(self) -> None:
        self._alive = False
        if self._writer is not None:
            self._writer.close()  # end of input: the child returns
        if self.process is not None:
            await asyncio.to_thread(self.process.join, STOP_TIMEOUT)
            if self.process.is_alive():
                log.error("inference process %s did not stop; killing it", self.process.pid)
                self.process.kill()
                await asyncio.to_thread(self.process.join)
        if self._reader is not None:
            self._reader.close()

    def _key(self, engine: Engine) -> int:
        """The child's key for an engine; a new one is sent first, with the keys of engines
        that are gone (an old version after a reload), which the child then drops."""
        key = self._keys.get(engine)
        if key is None:
            key, self._next_key = self._next_key, self._next_key + 1
            forgotten = self._registered - set(self._keys.values())
            self._keys[engine] = key
            self._registered = (self._registered - forgotten) | {key}
            assert self._writer is not None
            self._writer.write(frame(("engine", key, engine, sorted(forgotten))))
        return key

    def _receive(self, message: Any) -> None:
        kind = message[0]
        if kind == "result":
            _, index, value, error = message
            settle(self._batch[index].future, from_wire(value), error)
        elif kind == "done" and self._done is not None and not self._done.done():
            self._done.set_result(None)
        elif kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _lost(self) -> None:
        """The child's end closed: it exited. Expected when stopping; otherwise its jobs fail."""
        if not self._alive:
            return
        self._alive = False
        code = self.process.exitcode if self.process is not None else None
        log.error("inference process exited unexpectedly (exit code %s)", code)
        error = InferenceError("the inference process exited; retry the request")
        for pending in self._batch:
            settle(pending.future, None, error)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self._writer is not None:
            self._writer.close()
