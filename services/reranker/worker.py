"""One thread that runs a local model's scoring jobs one at a time, in chunks it can abandon.

A local model (a torch or ONNX cross-encoder) uses both cores for one prediction, so jobs run
one at a time, first come first served. A job is split into chunks of `chunk_size` pairs; the
thread checks between chunks whether the caller gave up (its budget or the query's deadline
ran out: the awaiting task was cancelled) and then drops the rest of the job. A job given up
before its turn is skipped. So abandoned work holds the thread for at most one chunk, and the
queries behind it are not delayed by scoring nobody waits for.
"""

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Predict = Callable[[str, Sequence[str]], list[float]]
"""Blocking: one score per (query, passage) pair."""


@dataclass(eq=False)
class _Job:
    query: str
    passages: Sequence[str]
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[list[float]]"
    abandoned: threading.Event = field(default_factory=threading.Event)


@dataclass
class WorkerStats:
    """What the thread did (read by tests and benches; written only by the thread)."""

    chunks_run: int = 0
    jobs_done: int = 0
    jobs_skipped: int = 0
    """Given up before their first chunk."""
    jobs_abandoned: int = 0
    """Given up midway: their remaining chunks were never run."""


class ScoringWorker:
    def __init__(self, predict: Predict, *, chunk_size: int = 8, name: str = "scorer") -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.predict = predict
        self.chunk_size = chunk_size
        self.stats = WorkerStats()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """The scores, once the thread has run every chunk of this job. Cancelling the await
        (a timeout) abandons the job: the thread runs none of its chunks after the current one.
        """
        if self._closed.is_set():
            raise RuntimeError("the scoring worker is closed")
        loop = asyncio.get_running_loop()
        job = _Job(query, list(passages), loop, loop.create_future())
        self._jobs.put(job)
        try:
            return await job.future
        finally:
            job.abandoned.set()  # done, failed or given up: nothing more to run for it

    def close(self) -> None:
        """Stop after the current chunk; queued jobs are never run (their callers get an
        error). Does not wait for the thread."""
        self._closed.set()
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._closed.is_set():
                _settle(job, error=RuntimeError("the scoring worker is closed"))
                continue
            if job.abandoned.is_set():
                self.stats.jobs_skipped += 1
                continue
            try:
                scores = self._score(job)
            except Exception as exc:
                _settle(job, error=exc)
                continue
            if scores is None:
                self.stats.jobs_abandoned += 1
            else:
                self.stats.jobs_done += 1
                _settle(job, scores)
        while True:  # closed: fail what is still queued
            try:
                left = self._jobs.get_nowait()
            except queue.Empty:
                return
            if left is not None:
                _settle(left, error=RuntimeError("the scoring worker is closed"))

    def _score(self, job: _Job) -> list[float] | None:
        """The job's scores, chunk by chunk; None if it was given up midway."""
        scores: list[float] = []
        for start in range(0, len(job.passages), self.chunk_size):
            if job.abandoned.is_set() or self._closed.is_set():
                return None
            chunk = job.passages[start : start + self.chunk_size]
            scores.extend(self.predict(job.query, chunk))
            self.stats.chunks_run += 1
        return scores


def _settle(
    job: _Job, scores: list[float] | None = None, *, error: BaseException | None = None
) -> None:
    """Hand the outcome to the job's event loop (if the caller still waits and the loop runs)."""

    def deliver() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(scores or [])

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
        job.loop.call_soon_threadsafe(deliver)
