"""CPU seconds used by a process and all its descendants (Linux /proc, through `openpi_triton.process`), to
see which process a request's time goes to when everything shares the same cores."""

from __future__ import annotations

from openpi_triton.process import cpu_seconds, descendants


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (0.0 when it is gone)."""
    return sum(cpu_seconds(process) for process in [pid, *descendants(pid)])
