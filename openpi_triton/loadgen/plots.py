"""PNG plots of benchmark points: latency CDFs, and throughput / p99 / deadline misses against fleet size.

Small files on purpose (they are committed under docs/): low dpi, no embedded fonts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on benchmark machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from openpi_triton.loadgen.stats import PointResult

Rows = Mapping[str, Sequence[PointResult]]
DPI = 80


def _plain_ticks(axis: Any) -> None:
    """Log axes with plain numbers (10, 20, 50) instead of crowded 10^x labels."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def plot_latency_cdf(rows: Rows, path: Path) -> Path:
    """One panel per fleet size; one line per row."""
    sizes = sorted({p.robots for points in rows.values() for p in points})
    columns = min(len(sizes), 2) or 1
    lines = (len(sizes) + columns - 1) // columns or 1
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.4 * lines), squeeze=False)
    for ax, robots in zip(axes.flat, sizes, strict=False):
        for label, points in rows.items():
            for point in points:
                if point.robots == robots and point.latencies_ms:
                    values = np.sort(point.latencies_ms)
                    ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=label)
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
        ax.set_title(f"{robots} robot{'s' if robots > 1 else ''}")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(sizes):]:
        ax.set_visible(False)
    fig.suptitle("Latency CDF per fleet size")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_scaling(rows: Rows, path: Path, offered_per_robot: float | None = None) -> Path:
    """Throughput, p99 latency and deadline-miss share against the number of robots.

    `offered_per_robot` (requests/s the schedule asks of each robot) draws the offered load: no server
    can answer more than that.
    """
    fig, (tput, p99, misses) = plt.subplots(1, 3, figsize=(14, 3.8))
    sizes = sorted({p.robots for points in rows.values() for p in points})
    if offered_per_robot:
        tput.plot(sizes, [n * offered_per_robot for n in sizes], "k--", linewidth=0.8, label="offered load")
    for label, points in rows.items():
        ordered = sorted(points, key=lambda p: p.robots)
        robots = [p.robots for p in ordered]
        tput.plot(robots, [p.throughput for p in ordered], marker="o", label=label)
        p99.plot(robots, [p.latency_ms["p99"] for p in ordered], marker="o", label=label)
        misses.plot(robots, [100 * p.miss_rate for p in ordered], marker="o", label=label)
    for ax, title, unit in ((tput, "throughput", "answers / s"), (p99, "p99 latency", "ms (log)"),
                            (misses, "deadline misses", "% of answers")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        if ax is not p99:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("robots")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    p99.set_yscale("log")
    _plain_ticks(p99.yaxis)
    tput.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
