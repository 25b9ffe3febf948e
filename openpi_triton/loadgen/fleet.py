"""A fleet of simulated robots on one asyncio loop, each asking a policy for action chunks on a schedule.

The schedule of each robot is a `Schedule` (openpi_triton.loadgen.schedule).

Robots start at random phases within one period, so a fleet does not arrive in lockstep. Requests
sent during `warmup_s` are not recorded; then the window of `duration_s` is measured. Latency is
from the request leaving the robot to its answer, for requests sent in the window (their answers may
come after it: leaving them out would hide the slowest). Throughput counts answers that arrive
inside the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from openpi_triton.loadgen.schedule import Schedule
from openpi_triton.loadgen.stats import PointResult, latency_summary

MAX_ERROR_MESSAGES = 5


class ChannelBroken(RuntimeError):
    """The connection is gone; the robot reconnects before its next request."""


class ServerError(RuntimeError):
    """The server answered with an error (OpenPI's text frame, GR00T's {"error": ...}) or without actions."""


class Channel(Protocol):
    """One robot's connection to a policy."""

    async def call(self) -> float | None:
        """One inference; returns the server-reported inference time in ms, if the server sends one."""

    async def close(self) -> None: ...


OpenChannel = Callable[[int], Awaitable[Channel]]


@dataclass
class _Sample:
    sent: float
    done: float
    ok: bool
    server_ms: float | None = None


@dataclass
class _Recorder:
    """Samples of the whole run; the window decides later what counts."""

    samples: list[_Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def error(self, sent: float, message: str) -> None:
        self.samples.append(_Sample(sent, time.perf_counter(), ok=False))
        if len(self.errors) < MAX_ERROR_MESSAGES:
            self.errors.append(message[:300])


class Progress:
    """One stderr line, rewritten twice a second on a terminal (a final line otherwise)."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self.live = enabled and sys.stderr.isatty()

    def line(self, recorder: _Recorder, start: float, window: tuple[float, float]) -> str:
        now = time.perf_counter()
        measuring = now >= window[0]
        latencies = [1000 * (s.done - s.sent) for s in recorder.samples if s.ok and s.sent >= window[0]]
        summary = latency_summary(latencies)
        errors = sum(not s.ok for s in recorder.samples)
        phase = "measuring" if measuring else "warming up"
        elapsed = now - start
        total = window[1] - start
        return (f"{self.label}: {phase} {min(elapsed, total):5.1f}/{total:.0f} s  answers {len(latencies)}  "
                f"p50 {summary['p50']:.1f} ms  p99 {summary['p99']:.1f} ms  errors {errors}")

    async def run(self, recorder: _Recorder, start: float, window: tuple[float, float]) -> None:
        if not self.live:
            return
        while True:
            sys.stderr.write("\r\033[K" + self.line(recorder, start, window))
            sys.stderr.flush()
            await asyncio.sleep(0.5)

    def finish(self, result: PointResult) -> None:
        if not self.enabled:
            return
        lat = result.latency_ms
        text = (f"{self.label}: {result.requests} answers, {result.throughput:.1f}/s, p50 {lat['p50']:.1f} ms, "
                f"p99 {lat['p99']:.1f} ms, misses {result.deadline_misses}, errors {result.errors}")
        sys.stderr.write(("\r\033[K" if self.live else "") + text + "\n")
        sys.stderr.flush()


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _robot(index: int, open_channel: OpenChannel, schedule: Schedule, first_send: float, stop: float,
                 recorder: _Recorder) -> None:
    channel: Channel | None = None
    next_send = first_send
    try:
        while next_send < stop:
            await _sleep_until(next_send)
            sent = time.perf_counter()
            try:
                if channel is None:
                    channel = await open_channel(index)
                    sent = time.perf_counter()  # a reconnect is not part of the request
                server_ms = await channel.call()
            except ChannelBroken as error:
                recorder.error(sent, f"{type(error).__name__}: {error}")
                if channel is not None:
                    with contextlib.suppress(Exception):
                        await channel.close()
                channel = None
                next_send = time.perf_counter() + 0.2  # do not spin on a dead server
                continue
            except Exception as error:  # a server error frame, a malformed answer: counted, the robot goes on
                recorder.error(sent, f"{type(error).__name__}: {error}")
                next_send = max(sent + schedule.period_s, time.perf_counter())
                continue
            done = time.perf_counter()
            recorder.samples.append(_Sample(sent, done, ok=True, server_ms=server_ms))
            next_send = max(sent + schedule.period_s, done)
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


def _result(label: str, robots: int, schedule: Schedule, recorder: _Recorder,
            window: tuple[float, float], cpu_s: float) -> PointResult:
    start, end = window
    duration = end - start
    in_window = [s for s in recorder.samples if start <= s.sent < end]
    answered = [s for s in in_window if s.ok]
    latencies = [1000 * (s.done - s.sent) for s in answered]
    deadline = schedule.deadline
    server = [s.server_ms for s in answered if s.server_ms is not None]
    outside = [1000 * (s.done - s.sent) - s.server_ms for s in answered if s.server_ms is not None]
    return PointResult(
        row=label, robots=robots, duration_s=duration, requests=len(answered),
        errors=len(in_window) - len(answered),
        deadline_misses=sum(lat > deadline * 1000 for lat in latencies) if deadline else 0,
        deadline_ms=deadline * 1000 if deadline else None,
        throughput=sum(start <= s.done < end for s in recorder.samples if s.ok) / duration,
        latency_ms=latency_summary(latencies),
        server_ms=latency_summary(server) if server else {},
        overhead_ms=latency_summary(outside) if outside else {},
        client_cpu=cpu_s / duration,
        error_messages=list(recorder.errors), latencies_ms=latencies,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


WindowHook = Callable[[str], None]


async def drive_fleet(
    label: str, open_channel: OpenChannel, robots: int, schedule: Schedule, duration_s: float,
    warmup_s: float = 2.0, seed: int = 0, progress: bool = True, drain_timeout_s: float = 60.0,
    on_window: WindowHook | None = None,
) -> PointResult:
    """Run `robots` robots against `open_channel` and measure one window. Connections are opened
    before the clock starts (connecting is not an inference).

    `on_window("start")` and `on_window("end")` run (in a worker thread, so robots are not held up)
    at the window's edges: for server-side counters that should cover the same window.
    """
    channels: list[Channel] = list(await asyncio.gather(*(open_channel(i) for i in range(robots))))
    opened: set[int] = set()

    async def open_once(index: int) -> Channel:
        # The first connection of each robot is already open; reconnects open new ones.
        if index not in opened:
            opened.add(index)
            return channels[index]
        return await open_channel(index)

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + duration_s)
    recorder = _Recorder()
    reporter = Progress(f"{label} x{robots}", progress)
    ticker = asyncio.create_task(reporter.run(recorder, start, window))
    cpu_before = _cpu_seconds()
    tasks = [
        asyncio.create_task(_robot(i, open_once, schedule, start + rng.uniform(0, schedule.period_s),
                                   window[1], recorder))
        for i in range(robots)
    ]
    cpu_window: list[float] = []

    async def measure_cpu() -> None:
        loop = asyncio.get_running_loop()
        for edge, moment in (("start", window[0]), ("end", window[1])):
            await _sleep_until(moment)
            cpu_window.append(_cpu_seconds())
            if on_window is not None:
                await loop.run_in_executor(None, on_window, edge)

    cpu_task = asyncio.create_task(measure_cpu())
    try:
        await _sleep_until(window[1])
        done, pending = await asyncio.wait(tasks, timeout=drain_timeout_s + (window[1] - time.perf_counter()))
        for task in pending:  # no answer before the drain timeout: counted as errors
            task.cancel()
        for task in done:
            if task.exception() is not None:  # a bug in a channel: counted, never silent
                recorder.error(window[0], f"robot crashed: {task.exception()!r}")
        for _ in pending:
            recorder.error(window[1] - 1e-9, f"no answer within {drain_timeout_s:.0f} s after the window")
        await cpu_task
    finally:
        ticker.cancel()
        cpu_task.cancel()
    cpu = cpu_window[1] - cpu_window[0] if len(cpu_window) == 2 else _cpu_seconds() - cpu_before
    result = _result(label, robots, schedule, recorder, window, cpu)
    reporter.finish(result)
    return result
