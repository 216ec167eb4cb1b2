"""Read-ahead for streamed batches: decoding the next batch overlaps reducing the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Yield ``items`` while a background thread reads the next one (decoding overlaps reduction).

    At most one item waits in the queue, so memory grows by about two batches. Closing the
    generator early stops the reader thread before returning.
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(("error", exc))

    reader = threading.Thread(target=produce, name="cpcnn-aggregate-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        reader.join()
