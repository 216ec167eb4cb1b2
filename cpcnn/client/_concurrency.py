"""The only code where the blocking and the asyncio clients differ: sleeping and running sites at once.

``scripts/unasync.py`` maps each ``async_*`` name here to its blocking twin when it generates
``_sync.py``, so both pairs keep the same signature and the same meaning: ``limit`` is how many calls
run at the same time; each call is one site (submit, wait, fetch), so ``limit`` bounds the jobs that
are submitted but not yet finished.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from cpcnn.errors import InputError

T = TypeVar("T")
R = TypeVar("R")


def check_limit(limit: int) -> int:
    """A usable concurrency limit (a positive integer), else an ``InputError`` naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"max_in_flight must be a positive integer, got {limit!r}")
    return limit


async def async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


class _Stopped(Exception):
    """A call skipped because an earlier one failed (never raised to the caller)."""


async def async_map_bounded(
    call: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int, done: Callable[[], object]
) -> list[R]:
    """``[await call(item) for item in items]``, at most ``limit`` at a time; results in input order.

    The first failure is raised as it is (not in an ``ExceptionGroup``); no call starts after it and
    the running ones are cancelled.
    """
    gate = asyncio.Semaphore(check_limit(limit))
    stop = asyncio.Event()

    async def one(item: T) -> R:
        async with gate:
            if stop.is_set():
                raise _Stopped
            try:
                result = await call(item)
            except BaseException:
                stop.set()
                raise
        done()
        return result

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                await next_done
            except _Stopped:
                continue  # the failure that stopped it is raised when it comes
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [task.result() for task in tasks]


def map_bounded(call: Callable[[T], R], items: Sequence[T], limit: int, done: Callable[[], object]) -> list[R]:
    """``[call(item) for item in items]`` on ``limit`` threads; results in input order.

    The first failure is raised at once and no call starts after it; the running ones end in the
    background (a closed client ends them at their next request).
    """
    stop = threading.Event()

    def one(item: T) -> R:
        if stop.is_set():
            raise _Stopped
        try:
            return call(item)
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(max_workers=check_limit(limit), thread_name_prefix="cpcnn-client")
    try:
        futures = [pool.submit(one, item) for item in items]
        for future in as_completed(futures):
            if not isinstance(future.exception(), _Stopped):  # the failure that stopped it is raised when it comes
                future.result()
                done()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [future.result() for future in futures]
