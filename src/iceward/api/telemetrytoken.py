"""Telemetry tokens: what lets a browser post its call record without an API key in the page.

``POST /api/v1/ice-servers`` answers a ``telemetryToken`` next to the iceServers. It is bound to
that issuance (its request id, so a record joins the exact iceServers it was given), carries the
region the backend asked for and when the issued credential expires (what the analyzer's
credential-expiry rule needs, without a lookup), and expires itself:
``<request id>.<expiry>.<credential expiry>.<region>.<mac>``, HMAC-SHA256 with a key kept in the
data dir. Any process holding the key verifies it without a lookup; how many records one token
may post is counted (:mod:`iceward.telemetry.writer`, kept in the store).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from iceward.datadir import signing_key

KEY_FILE = "telemetry-token-key"
#: A call may start just before its credential expires and last a while: the token outlives
#: the credential by this much, and no more.
CALL_GRACE_S = 4 * 3600
#: Records one token may post: one per PeerConnection of the page it was handed to.
MAX_USES = 10
MAX_TOKEN_CHARS = 300
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class TelemetryToken:
    request_id: str
    expires_at: int
    credential_expires_at: int
    region: str | None


def ensure_key(data_dir: Path) -> bytes:
    """The signing key in ``data_dir``, made the first time."""
    return signing_key(data_dir, KEY_FILE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest()[:18])


def mint(key: bytes, request_id: str, ttl: int, now: float, region: str | None = None) -> str:
    """A token for the issuance ``request_id`` whose credential lives ``ttl`` seconds."""
    if not _REQUEST_ID.match(request_id):
        raise ValueError("a request id of 1-64 letters, digits, '-' or '_'")
    credential_expiry = int(now) + ttl
    expiry = credential_expiry + CALL_GRACE_S
    payload = f"{request_id}.{expiry}.{credential_expiry}.{_b64((region or '').encode())}"
    return f"{payload}.{_mac(key, payload)}"


def check(key: bytes, token: str, now: float) -> TelemetryToken | None:
    """The token's claims if it is authentic and live, else None."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 4:
        return None
    payload, _, mac = token.rpartition(".")
    if not hmac.compare_digest(_mac(key, payload), mac):
        return None
    request_id, expiry_text, credential_text, region_text = payload.split(".")
    if not (expiry_text.isdigit() and credential_text.isdigit()) or int(expiry_text) < now:
        return None
    region = base64.urlsafe_b64decode(region_text + "=" * (-len(region_text) % 4)).decode()
    return TelemetryToken(request_id, int(expiry_text), int(credential_text), region or None)
