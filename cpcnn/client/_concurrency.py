"""The only code where the blocking and the asyncio clients differ: sleeping and running sites at once.

``scripts/unasync.py`` maps each ``async_*`` name here to its blocking twin when it generates
``_sync.py``, so both pairs keep the same signature and the same meaning: ``limit`` is how many calls
run at the same time; each call is one site (submit, wait, fetch), so ``limit`` bounds the jobs that
are submitted but not yet finished.
"""

from __future__ import annotations

import asyncio
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


async def async_map_bounded(
    call: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int, done: Callable[[], object]
) -> list[R]:
    """``[await call(item) for item in items]``, at most ``limit`` at a time; results in input order.

    The first failure cancels the calls still running or waiting and is raised.
    """
    gate = asyncio.Semaphore(check_limit(limit))

    async def one(item: T) -> R:
        async with gate:
            result = await call(item)
        done()
        return result

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(item)) for item in items]
    return [task.result() for task in tasks]


def map_bounded(call: Callable[[T], R], items: Sequence[T], limit: int, done: Callable[[], object]) -> list[R]:
    """``[call(item) for item in items]`` on ``limit`` threads; results in input order.

    The first failure cancels the calls not yet started, waits for the running ones and is raised.
    """
    with ThreadPoolExecutor(max_workers=check_limit(limit), thread_name_prefix="cpcnn-client") as pool:
        futures = [pool.submit(call, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
                done()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [future.result() for future in futures]
