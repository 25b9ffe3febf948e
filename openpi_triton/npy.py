"""Reading .npy files from several threads of one process.

numpy parses a .npy header with `ast.literal_eval`, and CPython 3.11 keeps the AST constructor's recursion
depth in interpreter-wide state: two threads parsing at once can fail with "SystemError: AST constructor
recursion depth mismatch" (python/cpython#106905). It happened here with 16 GR00T robots in threads beside
the front, on a loaded machine. Every .npy read of ours goes through one lock; a header is a few hundred
bytes, so the lock is held for microseconds.
"""

from __future__ import annotations

import io
import threading
from typing import BinaryIO

import numpy as np

_AST_LOCK = threading.Lock()


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy file at the start of `stream`, which is left at its data.
    Raises ValueError for anything but a format 1.0 or 2.0 header (what `np.save` writes)."""
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version}")
    with _AST_LOCK:
        return readers[version](stream)


def load_npy(data: bytes) -> np.ndarray:
    """The array in a whole .npy file (never unpickled), as `np.load` reads it."""
    with _AST_LOCK:
        return np.load(io.BytesIO(data), allow_pickle=False)
