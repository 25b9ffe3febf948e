"""Real-time chunking (RTC) keys of a robot's frame -> the RTC tensors of its row, and what a session
remembers for it.

A robot executing chunk k while chunk k+1 is computed asks for RTC with one of two pairs of keys:

    explicit    rtc/leftover  float [n, action_dim]: the actions of its previous chunk it has NOT executed
                              when it sends the frame, in its own units (as the policy answered them)
                rtc/delay     int: control steps that will run before the answer arrives (the inference delay)
    remembered  rtc/executed  int: how many actions of the session's last answered chunk were executed
                              (counted from that chunk's first action); the front keeps the chunk
                rtc/delay     int, as above

Remembered mode is turned into the explicit leftover (`last_chunk[executed:]`) here, so the model sees one
kind of request. The answer is a whole chunk as before; its first `delay` actions are the ones that run
during inference (they follow the leftover), so the robot executes the answer from index `delay` on.
A frame without these keys gets the answer it always got. Policies without RTC refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from openpi_triton.front.codec import ProtocolError
from openpi_triton.triton.policy import Policy, RtcSpec

LEFTOVER_KEY, DELAY_KEY, EXECUTED_KEY = "rtc/leftover", "rtc/delay", "rtc/executed"
RTC_KEYS = (LEFTOVER_KEY, DELAY_KEY, EXECUTED_KEY)


@dataclass(frozen=True)
class RtcRequest:
    leftover: np.ndarray   # float32 [n, action_dim], robot units
    delay: int


def _integer(key: str, value: Any) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{key} must be an integer (control steps), got {type(value).__name__}")
    return value


def _leftover(spec: RtcSpec, value: Any) -> np.ndarray:
    if isinstance(value, list):
        try:
            value = np.asarray(value, np.float64)
        except (ValueError, TypeError):
            raise ProtocolError(f"{LEFTOVER_KEY} must be a rectangular array of numbers") from None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        raise ProtocolError(f"{LEFTOVER_KEY} must be a float array [n, {spec.action_dim}], got "
                            f"{type(value).__name__}")
    if value.ndim != 2 or value.shape[1] != spec.action_dim or not 1 <= value.shape[0] <= spec.chunk_size:
        raise ProtocolError(f"{LEFTOVER_KEY} must be [n, {spec.action_dim}] with 1 <= n <= {spec.chunk_size} "
                            f"(the chunk size), got {value.dtype} of shape {list(value.shape)}")
    leftover = value.astype(np.float32)
    if not np.isfinite(leftover).all():
        raise ProtocolError(f"{LEFTOVER_KEY} contains NaN or inf")
    return leftover


def rtc_request(policy: Policy, message: Mapping[str, Any], last_chunk: np.ndarray | None) -> RtcRequest | None:
    """The frame's RTC request, None when it sends no RTC key; ProtocolError naming what is wrong."""
    sent = [key for key in RTC_KEYS if key in message]
    if not sent:
        return None
    spec = policy.rtc
    if spec is None:
        raise ProtocolError(f"policy {policy.name!r} does not support real-time chunking (RTC) and got {sent}; "
                            "send frames without 'rtc/*' keys (a policy that supports RTC says "
                            "'rtc': {'supported': true, ...} in its handshake)")
    if DELAY_KEY not in message:
        raise ProtocolError(f"RTC needs {DELAY_KEY} (the inference delay in control steps) with {sent}")
    if (LEFTOVER_KEY in message) == (EXECUTED_KEY in message):
        raise ProtocolError(f"RTC takes either {LEFTOVER_KEY} (explicit) or {EXECUTED_KEY} (remembered), "
                            "exactly one of them, with " + DELAY_KEY)
    delay = _integer(DELAY_KEY, message[DELAY_KEY])
    if LEFTOVER_KEY in message:
        leftover = _leftover(spec, message[LEFTOVER_KEY])
    else:
        executed = _integer(EXECUTED_KEY, message[EXECUTED_KEY])
        if last_chunk is None:
            raise ProtocolError(f"{EXECUTED_KEY}: this session has no answered chunk yet to continue; send its "
                                f"first frame without RTC keys (or with an explicit {LEFTOVER_KEY})")
        if not 0 <= executed < len(last_chunk):
            raise ProtocolError(f"{EXECUTED_KEY} {executed}: the session's last chunk has {len(last_chunk)} "
                                f"actions, so it must be in [0, {len(last_chunk) - 1}] (some must be left)")
        leftover = last_chunk[executed:]
    if not 0 <= delay <= len(leftover) or delay >= spec.chunk_size:
        raise ProtocolError(f"{DELAY_KEY} {delay}: must be in [0, {min(len(leftover), spec.chunk_size - 1)}] "
                            f"(at most the {len(leftover)} leftover actions, less than the chunk of "
                            f"{spec.chunk_size})")
    return RtcRequest(leftover, delay)


def rtc_tensors(spec: RtcSpec, request: RtcRequest | None, rows: int = 1) -> dict[str, np.ndarray]:
    """The RTC inputs of `rows` rows (leading axis) for one request, or without RTC (length 0)."""
    leftover = np.zeros((rows, spec.chunk_size, spec.action_dim), np.float32)
    length = np.zeros((rows, 1), np.int64)
    delay = np.zeros((rows, 1), np.int64)
    if request is not None:
        leftover[:, :len(request.leftover)] = request.leftover
        length[:] = len(request.leftover)
        delay[:] = request.delay
    return {spec.leftover: leftover, spec.length: length, spec.delay: delay}


def answered_chunk(spec: RtcSpec, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The chunk a session remembers for remembered-mode RTC: the first row of the policy's action output."""
    return np.array(outputs[spec.output][0], np.float32)
