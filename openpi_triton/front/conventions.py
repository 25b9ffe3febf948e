"""Answers in the form a client reads: the array markers of its own frames (decided per connection) and
the policy's answer convention (`openpi_triton.triton.conventions`: a map or a bare array for `infer`, a
map or a text frame for `reset`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from openpi_triton.front.codec import MSGPACK_NUMPY_MARKERS, OPENPI_MARKERS, encode
from openpi_triton.triton.policy import Policy

log = logging.getLogger("openpi_triton.front")

RESET_REPLY = "reset successful"
_MARKER_NAMES = {OPENPI_MARKERS: "openpi-client's __ndarray__", MSGPACK_NUMPY_MARKERS: "msgpack-numpy's nd"}


class ClientEncoding:
    """The array markers of one connection's answers: openpi-client's until a frame carries arrays, then
    those of the first frame that does (a frame with both kinds counts as openpi-client's, the protocol's
    own). Stated in a log line once decided."""

    def __init__(self, log_extra: Callable[..., dict[str, Any]]) -> None:
        self._log_extra = log_extra
        self.decided: str | None = None

    @property
    def markers(self) -> str:
        return self.decided or OPENPI_MARKERS

    def observe(self, seen: set[str]) -> None:
        """Take the marker formats one decoded frame used (`codec.decode_frame(frame, seen)`)."""
        if self.decided is not None or not seen:
            return
        self.decided = OPENPI_MARKERS if OPENPI_MARKERS in seen else MSGPACK_NUMPY_MARKERS
        log.info("client encoding: answering with %s array markers, as its frames use", _MARKER_NAMES[self.decided],
                 extra=self._log_extra(encoding=self.decided))


def infer_answer(policy: Policy, response: Mapping[str, Any], timing: Mapping[str, float], markers: str) -> bytes:
    """An `infer` answer: the response map with `server_timing`, or the bare array of one output."""
    if policy.convention.infer[markers] == "bare":
        return encode(response[policy.convention.bare_output], markers)
    return encode({**response, "server_timing": dict(timing)}, markers)


def reset_answer(policy: Policy, markers: str) -> bytes | str:
    """A `reset` answer: the msgpack map {"status": "reset successful"} (bytes) or the text frame (str)."""
    if policy.convention.reset[markers] == "text":
        return RESET_REPLY
    return encode({"status": RESET_REPLY}, markers)
