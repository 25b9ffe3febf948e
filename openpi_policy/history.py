"""Per-session camera history for a stateful policy (the way DreamZero keeps one): per Triton sequence
(correlation id), the last `depth` frames of each camera, folded into one image per camera so that the
shared policy core (one image per camera slot) sees the history and batches with every other robot.

The fold is a mosaic: a grid of `ceil(sqrt(depth))` x `ceil(sqrt(depth))` tiles of the core's image
size, newest frame top-left, older ones after it in reading order, black where the session has no frame
yet. Frames are resized with pad to a tile when they arrive, so a session holds depth x tile-sized frames
per camera whatever size its cameras send.

A sequence's START clears its history (the first call of a session, after a reset, or a new session id),
and so does a new `context` (the prompt: DreamZero rebuilds its state when the prompt changes); END frees
it after the call. Sequences that Triton drops without END (idle past the model's
`max_sequence_idle_microseconds`) are evicted least recently used past `max_sessions`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence

import numpy as np

from openpi_policy import spec
from openpi_policy.transforms import resize_with_pad


class SessionHistory:
    def __init__(self, cameras: Sequence[str], depth: int, max_sessions: int,
                 image_size: int = spec.IMAGE_SIZE) -> None:
        if depth < 1 or max_sessions < 1:
            raise ValueError(f"history needs depth >= 1 and max_sessions >= 1, got {depth} and {max_sessions}")
        self.cameras, self.depth, self.max_sessions = tuple(cameras), depth, max_sessions
        self.grid = math.ceil(math.sqrt(depth))
        self.image_size = image_size
        self.tile = image_size // self.grid
        self._sessions: OrderedDict[int, tuple[object, dict[str, deque[np.ndarray]]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, sequence: int, start: bool, frames: Mapping[str, np.ndarray],
            context: object = None) -> tuple[dict[str, np.ndarray], int]:
        """Add one call's frames (camera -> uint8 [H, W, 3]) to the sequence's history; return each camera's
        mosaic (uint8 [size, size, 3]) and how many frames of history it holds (1 on a START or a new
        `context`)."""
        if start or sequence not in self._sessions or self._sessions[sequence][0] != context:
            self._sessions[sequence] = (context, {camera: deque(maxlen=self.depth) for camera in self.cameras})
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(sequence)
        history = self._sessions[sequence][1]
        for camera in self.cameras:
            history[camera].appendleft(self._to_tile(frames[camera], camera))
        return {camera: self._mosaic(history[camera]) for camera in self.cameras}, len(history[self.cameras[0]])

    def end(self, sequence: int) -> None:
        self._sessions.pop(sequence, None)

    def _to_tile(self, frame: np.ndarray, camera: str) -> np.ndarray:
        if frame.ndim != 3 or frame.shape[-1] != 3 or 0 in frame.shape:
            raise ValueError(f"camera {camera!r}: expected one [H, W, 3] frame, got shape {list(frame.shape)}")
        return resize_with_pad(np.ascontiguousarray(frame), self.tile, self.tile).copy()

    def _mosaic(self, tiles: deque[np.ndarray]) -> np.ndarray:
        out = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        for index, tile in enumerate(tiles):  # newest first
            row, col = divmod(index, self.grid)
            out[row * self.tile:(row + 1) * self.tile, col * self.tile:(col + 1) * self.tile] = tile
        return out
