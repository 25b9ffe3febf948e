"""The server's cap on live sessions of stateful policies (each holds policy state: a Triton sequence and
whatever the model keeps for it), as vllm-omni's session manager caps them: a session is live from its
first call until it ends (reset, new session id, disconnect)."""

from __future__ import annotations

from typing import Protocol


class _Session(Protocol):
    live: bool


class SessionLimitReached(Exception):
    """No room for another live session; the message says what the robot can do."""


class LiveSessions:
    """How many sessions of stateful policies are live on this server, up to `limit`. The front's event
    loop is the only caller, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def open(self) -> None:
        """Count one more live session; raises SessionLimitReached at the limit."""
        if self.count >= self.limit:
            raise SessionLimitReached(
                f"server at its limit of {self.limit} live sessions of stateful policies (max_live_sessions); "
                "end a session (reset, or close its connection) or retry later")
        self.count += 1

    def close(self) -> None:
        self.count = max(0, self.count - 1)

    def admit(self, session: _Session) -> None:
        """Count `session` from its first call on (once); raises SessionLimitReached at the limit."""
        if not session.live:
            self.open()
            session.live = True

    def release(self, session: _Session) -> None:
        """`session` ended (or never started): no longer counted."""
        if session.live:
            session.live = False
            self.close()
