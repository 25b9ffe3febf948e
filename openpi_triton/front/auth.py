"""API-key checks: the websocket upgrade's `Authorization: Api-Key <key>` (openpi-client) or `Bearer <key>`,
and the `api_token` of a GR00T request."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

_SCHEMES = ("api-key", "bearer")


def presented_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() if scheme.lower() in _SCHEMES and key.strip() else None


def key_matches(presented: object, keys: Iterable[str]) -> bool:
    """Constant-time comparison of a presented key against every configured key (no early exit on a match)."""
    candidate = presented.encode() if isinstance(presented, str) else b""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched and bool(candidate)


def is_authorized(authorization: str | None, keys: Iterable[str]) -> bool:
    return key_matches(presented_key(authorization), keys)
