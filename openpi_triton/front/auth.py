"""API-key checks for the websocket upgrade: `Authorization: Api-Key <key>` (openpi-client) or `Bearer <key>`."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

_SCHEMES = ("api-key", "bearer")


def presented_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() if scheme.lower() in _SCHEMES and key.strip() else None


def is_authorized(authorization: str | None, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    presented = (presented_key(authorization) or "").encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key.encode())
    return matched and bool(presented)
