"""The CLI's tool commands (check, client, bench); `serve` and `export` live in cli.py."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
