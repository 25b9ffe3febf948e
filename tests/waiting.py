"""The tests' two ways to wait, each bounded: poll a condition until it holds (`wait_until`, and its twin
for code inside an event loop), and run functions in threads side by side (`run_threads`). A wait that
runs out fails the test with what it waited for; nothing here asserts how long anything took."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Generous for two loaded cores: a wait that runs out is a failure, never a measurement.
DEFAULT_TIMEOUT_S = 60.0


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = DEFAULT_TIMEOUT_S,
               interval_s: float = 0.05) -> T:
    """`condition()`'s first true value, asked every `interval_s`; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(interval_s)


async def wait_until_async(condition: Callable[[], T], what: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                           interval_s: float = 0.05) -> T:
    """`wait_until` inside an event loop: the loop keeps running between the checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(interval_s)


def run_threads(functions: Sequence[Callable[[], T]], timeout_s: float = DEFAULT_TIMEOUT_S,
                together: bool = True) -> list[T]:
    """Each function in its own thread; their results in order. `together`: they start at one barrier, so
    their calls overlap. Fails the test when one raised (its exception) or one is still running after
    `timeout_s` (the threads are daemons: a hung one cannot hold the test run)."""
    barrier = threading.Barrier(len(functions)) if together and functions else None
    results: list[Any] = [None] * len(functions)
    errors: list[BaseException] = []

    def run(index: int, function: Callable[[], T]) -> None:
        try:
            if barrier is not None:
                barrier.wait(timeout_s)
            results[index] = function()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, f), daemon=True) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    running = sum(thread.is_alive() for thread in threads)
    if running:
        raise AssertionError(f"{running} of {len(threads)} threads still running after {timeout_s:g} s")
    if errors:
        raise errors[0]
    return results
