"""The /proc helpers the benchmarks count CPU time with: a process's descendants and its CPU seconds."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.cpu import tree_cpu_seconds
from openpi_triton.process import cpu_seconds, descendants


def test_descendants_and_their_cpu_time_are_counted():
    # A child that starts a grandchild, then both wait: the grandchild is found through the child.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);" \
             " print('up', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        below = descendants(child.pid)
        assert len(below) == 1 and below[0] != child.pid
        assert child.pid in descendants(os.getpid())
        assert cpu_seconds(os.getpid()) > 0
        assert tree_cpu_seconds(child.pid) >= cpu_seconds(child.pid) > 0  # the interpreters' start-up
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, 9)
        child.kill()
        child.wait(10)
    assert cpu_seconds(child.pid) == 0.0  # gone
