"""Short-lived test-link tokens: HMAC-signed with a key kept in the data dir.

A token lets the test page fetch TURN credentials (``GET /api/v1/test-ice-servers?t=...``) without
an API key in the link. It carries only its expiry and a random nonce: ``<expiry>.<nonce>.<mac>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from iceward.datadir import signing_key

KEY_FILE = "test-link-key"
DEFAULT_TTL = 3600
MAX_TTL = 7 * 86400


def ensure_key(data_dir: Path) -> bytes:
    """The signing key in ``data_dir``, made the first time."""
    return signing_key(data_dir, KEY_FILE)


def _mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def mint_token(key: bytes, ttl: int = DEFAULT_TTL, now: float | None = None) -> str:
    if not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds")
    expiry = int((time.time() if now is None else now) + ttl)
    payload = f"{expiry}.{secrets.token_urlsafe(6)}"
    return f"{payload}.{_mac(key, payload)}"


def check_token(key: bytes, token: str, now: float | None = None) -> int | None:
    """The token's expiry if it is authentic and live, else None."""
    if len(token) > 200:
        return None
    payload, _, mac = token.rpartition(".")
    expiry_text, _, nonce = payload.partition(".")
    if not nonce or not expiry_text.isdigit():
        return None
    if not hmac.compare_digest(_mac(key, payload), mac):
        return None
    expiry = int(expiry_text)
    if expiry < (time.time() if now is None else now):
        return None
    return expiry
