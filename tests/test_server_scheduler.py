"""The scheduler: one thread, newest request per key wins, cancellation reaches the computation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lsp_server.scheduler import Superseded, Worker


def spinner(started: threading.Event, seen_cancel: list, steps: int = 400):
    """A fake decode loop: checks should_cancel every 5 ms, like the engine does every step."""

    def fn(should_cancel):
        started.set()
        for i in range(steps):
            if should_cancel():
                seen_cancel.append(i)
                return "stopped"
            time.sleep(0.005)
        return "done"

    return fn


async def test_newer_submit_supersedes_at_once_and_stops_the_older_computation():
    w = Worker()
    started, seen = threading.Event(), []
    old = asyncio.ensure_future(w.submit("doc", spinner(started, seen)))
    await asyncio.to_thread(started.wait, 5)
    t0 = time.perf_counter()
    new = asyncio.ensure_future(w.submit("doc", lambda _c: "new"))
    with pytest.raises(Superseded):
        await old
    assert time.perf_counter() - t0 < 0.1  # answered at once, not after the computation
    assert await new == "new"
    assert seen and seen[0] < 50  # the old computation stopped at its next step
    assert w.stats.superseded == 1 and w.stats.interrupted == 1 and w.stats.max_running == 1
    w.close()


async def test_queued_superseded_work_never_runs():
    w = Worker()
    started, seen = threading.Event(), []
    blocker = asyncio.ensure_future(w.submit("other", spinner(started, seen, steps=20)))
    await asyncio.to_thread(started.wait, 5)
    ran = []
    first = asyncio.ensure_future(w.submit("doc", lambda _c: ran.append("first")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(w.submit("doc", lambda _c: ran.append("second") or "second"))
    with pytest.raises(Superseded):
        await first
    assert await second == "second" and await blocker == "done"
    assert ran == ["second"] and w.stats.skipped == 1
    w.close()


async def test_cancelling_the_caller_cancels_the_computation():
    w = Worker()
    started, seen = threading.Event(), []
    task = asyncio.ensure_future(w.submit("doc", spinner(started, seen)))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await w.call(lambda: "after") == "after"  # the thread is free again, in order
    assert seen and w.stats.cancelled == 1
    w.close()


async def test_debounce_delay_lets_a_newer_request_win_without_computing():
    w = Worker()
    ran = []
    first = asyncio.ensure_future(w.submit("doc", lambda _c: ran.append(1), delay_s=0.2))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(w.submit("doc", lambda _c: ran.append(2) or 2, delay_s=0.01))
    with pytest.raises(Superseded):
        await first
    assert await second == 2 and ran == [2] and w.stats.started == 1
    w.close()


async def test_errors_reach_the_caller_and_other_keys_are_independent():
    w = Worker()

    def boom(_c):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await w.submit("a", boom)
    assert await asyncio.gather(w.submit("a", lambda _c: 1), w.submit("b", lambda _c: 2)) == [1, 2]
    assert w.stats.failed == 1
    w.close()
