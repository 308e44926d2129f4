"""Asyncio worker: one inference thread, off the event loop; the newest request per key supersedes older ones.

`await worker.submit(key, fn)` runs `fn(should_cancel)` on the inference thread and returns its result.
A newer submit with the same key supersedes the older one: the older caller gets `Superseded` at once,
and its `should_cancel()` turns true so its computation stops at the next decode step (or never starts).
Cancelling the awaiting task (e.g. `$/cancelRequest`) does the same and re-raises `CancelledError`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer request for the same key replaced this one."""


@dataclass
class Job:
    """One submitted computation."""

    key: Hashable
    fn: Callable[[Callable[[], bool]], Any]
    future: asyncio.Future
    cancel_event: threading.Event = field(default_factory=threading.Event)
    started: bool = False

    def should_cancel(self) -> bool:
        return self.cancel_event.is_set()


@dataclass
class WorkerStats:
    """Counters shown by codegen.status."""

    submitted: int = 0
    started: int = 0
    completed: int = 0
    superseded: int = 0
    cancelled: int = 0
    skipped: int = 0  # superseded or cancelled before they started: no computation at all
    failed: int = 0
    interrupted: int = 0  # started, then told to stop (superseded or cancelled while computing)
    max_running: int = 0  # most computations ever running at once (the design keeps it at 1)
    max_running_per_key: int = 0


class Worker:
    """One inference thread; per-key superseding; answers on the event loop."""

    def __init__(self, name: str = "inference") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._latest: dict[Hashable, Job] = {}
        self._running: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.stats = WorkerStats()
        self.closed = False

    def supersede(self, key: Hashable) -> None:
        """Answer the pending request for `key` (if any) as superseded and stop its computation."""
        job = self._latest.pop(key, None)
        if job is not None:
            self._cancel(job, Superseded(f"superseded by a newer request for {key!r}"))

    def _cancel(self, job: Job, exc: Superseded | None) -> None:
        if job.cancel_event.is_set():
            return
        job.cancel_event.set()
        if exc is not None:
            self.stats.superseded += 1
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            self.stats.cancelled += 1
            job.future.cancel()

    async def submit(
        self, key: Hashable, fn: Callable[[Callable[[], bool]], Any], delay_s: float = 0.0
    ) -> Any:
        """Run `fn(should_cancel)` on the inference thread after `delay_s`; newest per key wins."""
        if self.closed:
            raise RuntimeError("the inference worker is closed")
        loop = asyncio.get_running_loop()
        self.supersede(key)
        job = Job(key, fn, loop.create_future())
        self._latest[key] = job
        self.stats.submitted += 1
        try:
            if delay_s > 0:
                await asyncio.wait([job.future], timeout=delay_s)
            if not job.future.done():
                self._pool.submit(self._run, job, loop)
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job, None)
            raise
        finally:
            if self._latest.get(key) is job:
                del self._latest[key]

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the inference thread, in order with the computations (never superseded)."""
        return await self.submit(("__call__", next(self._ids)), lambda _cancel: fn())

    def post(self, fn: Callable[[], Any]) -> None:
        """Run `fn()` on the inference thread after the work already handed to it, without waiting."""
        if self.closed:
            return

        def run() -> None:
            try:
                fn()
            except Exception:
                log.exception("background engine call failed")

        self._pool.submit(run)

    def _run(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        if job.should_cancel():
            self.stats.skipped += 1
            return
        with self._lock:
            self._running[job.key] = self._running.get(job.key, 0) + 1
            self.stats.max_running = max(self.stats.max_running, sum(self._running.values()))
            self.stats.max_running_per_key = max(self.stats.max_running_per_key, self._running[job.key])
        self.stats.started += 1
        try:
            result, exc = job.fn(job.should_cancel), None
            self.stats.completed += 1
            if job.should_cancel():
                self.stats.interrupted += 1
        except BaseException as e:  # handed to the awaiting coroutine
            result, exc = None, e
            self.stats.failed += 1
        finally:
            with self._lock:
                self._running[job.key] -= 1
                if not self._running[job.key]:
                    del self._running[job.key]
        if not loop.is_closed():
            loop.call_soon_threadsafe(_settle, job.future, result, exc)

    def close(self) -> None:
        """Stop every pending computation at its next step and let the thread finish."""
        self.closed = True
        for job in list(self._latest.values()):
            job.cancel_event.set()  # thread-safe; the event loop may already be closed
        self._pool.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
