"""CPU seconds used by a process and all its descendants (Linux /proc), to see which process a
request's time goes to when everything shares the same cores."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid_dir: Path) -> tuple[int, int, float] | None:
    """(pid, parent pid, CPU seconds) of one /proc entry, or None if it vanished."""
    try:
        text = (pid_dir / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return int(pid_dir.name), int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (0.0 when it is gone)."""
    stats = [s for s in (_stat(p) for p in Path("/proc").glob("[0-9]*")) if s is not None]
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for child, parent, seconds in stats:
        children.setdefault(parent, []).append(child)
        cpu[child] = seconds
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total
