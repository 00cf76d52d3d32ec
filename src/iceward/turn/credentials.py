"""TURN REST API credentials (draft-uberti-behave-turn-rest): ``<expiry>:<user>`` + HMAC-SHA1.

Minted by whoever holds the shared secret (an app backend, ``iceward credentials``, the HTTP API)
and verified by any server or worker holding it: no state is shared.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


def rest_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), the password the draft defines."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


@dataclass(frozen=True, slots=True)
class RestCredential:
    username: str
    password: str
    ttl: int
    expires_at: int


def mint_rest_credential(secret: str, user: str, ttl: int, now: float) -> RestCredential:
    """A credential valid for ``ttl`` seconds from ``now`` for ``user`` (may be empty)."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    expires_at = int(now) + ttl
    username = f"{expires_at}:{user}" if user else str(expires_at)
    return RestCredential(username, rest_password(secret, username), ttl, expires_at)


def parse_rest_username(username: str) -> tuple[int, str] | None:
    """``(expiry, user)`` from ``<expiry>:<user>`` or ``<expiry>``; None if not that shape."""
    head, _, user = username.partition(":")
    if not head.isdigit() or len(head) > 12:
        return None
    return int(head), user


def ice_servers(uris: list[str], username: str, password: str) -> list[dict[str, object]]:
    """A WebRTC ``iceServers`` array: ``stun:`` URLs without credentials, TURN URLs with them."""
    stun = [u for u in uris if u.startswith(("stun:", "stuns:"))]
    turn = [u for u in uris if u.startswith(("turn:", "turns:"))]
    servers: list[dict[str, object]] = []
    if stun:
        servers.append({"urls": stun})
    if turn:
        servers.append({"urls": turn, "username": username, "credential": password})
    return servers
