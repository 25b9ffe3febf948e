"""uvicorn's websocket protocol with a lingering close for a frame over the size limit.

websockets refuses such a frame by its header, before reading its payload, and queues a close frame with
1009 (message too big). uvicorn then closes the socket at once, while most of the robot's frame is still
unread in the kernel: the kernel answers unread data with a TCP reset, and the reset usually destroys the
close frame on its way, so the robot sees "connection reset" and never learns why. Careful servers close
lingering instead (Apache's lingering close, RFC 7230 §6.6): send the close frame and end the writing side,
then keep reading and discarding what the client sends until it closes its side or a bounded time has
passed, and only then close the socket.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from openpi_triton.config import Settings

log = logging.getLogger("openpi_triton.front")


class LingeringWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol whose failed connections close lingering."""

    linger_s: ClassVar[float] = Settings.oversized_frame_linger_s

    lingering = False

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a refused frame, or whatever follows it: read, and dropped
        super().data_received(data)

    def handle_parser_exception(self) -> None:
        """A frame websockets refused (over the size limit, or malformed): the close frame it queued goes
        out with the end of our writing side, and the socket stays open for reading until the client's
        end or `linger_s`."""
        close = self.conn.close_sent
        code, reason = (close.code, close.reason) if close is not None else (1006, "")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.lingering = True
        self.stop_keepalive()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        log.info("websocket frame refused: closing after the client has stopped sending", extra={
            "code": code, "reason": reason, "linger_s": self.linger_s})
        # The client's end (EOF) closes the socket first, and connection_lost cancels this timer.
        self.close_timer = self.loop.call_later(self.linger_s, self.transport.close)


def lingering_protocol(settings: Settings) -> type[LingeringWebSocketProtocol]:
    """The protocol class for uvicorn's `ws` option, lingering `settings.oversized_frame_linger_s`."""
    attributes: dict[str, Any] = {"linger_s": settings.oversized_frame_linger_s}
    return type("LingeringWebSocketProtocol", (LingeringWebSocketProtocol,), attributes)
