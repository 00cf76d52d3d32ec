"""Long-term credential authentication (RFC 8489 section 9.2): nonces, users, REST secrets.

Nonces are stateless (a timestamp and an HMAC of it with the client address) so any worker or node
holding the nonce key verifies them. Keys come from static users (stored as keys, never passwords)
and from TURN REST API shared secrets, several at once so a secret can be rotated without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from iceward.stun.constants import ALGORITHM_MD5, ALGORITHM_SHA256
from iceward.stun.hmacs import hmac_digest
from iceward.stun.integrity import long_term_key
from iceward.turn.credentials import parse_rest_username, rest_password

Address = tuple[str, int]

#: RFC 8489 9.2: nonce cookie, then the security feature set (here: password algorithms only).
NONCE_COOKIE = "obMatJos2"
FEATURES_PASSWORD_ALGORITHMS = "gAAA"  # base64 of 0x800000: bit 0 set
#: How many verified (nonce, client) pairs :class:`NonceManager` remembers.
VERIFIED_NONCES = 4096
#: How many REST usernames' derived keys :class:`CredentialStore` remembers.
REST_KEYS = 4096


class NonceManager:
    """Issues and checks stateless nonces bound to the client address and a validity window."""

    def __init__(self, key: bytes, lifetime: float = 600.0) -> None:
        self._key = key
        self.lifetime = lifetime
        self.prefix = NONCE_COOKIE + FEATURES_PASSWORD_ALGORITHMS
        #: (nonce, client) pairs whose MAC checked out: an allocation's every request carries
        #: the same nonce, so its MAC is computed once. Bounded: emptied when full.
        self._verified: set[tuple[str, Address]] = set()

    @property
    def key(self) -> bytes:
        """The HMAC key (for an I/O adapter that issues the same nonces natively)."""
        return self._key

    def _mac(self, stamp: str, client: Address) -> str:
        msg = f"{stamp}|{client[0]}|{client[1]}".encode()
        return hmac_digest(self._key, msg, "sha256").hex()[:24]

    def issue(self, client: Address, now: float) -> str:
        stamp = f"{int(now):010x}"
        return self.prefix + stamp + self._mac(stamp, client)

    def check(self, nonce: str, client: Address, now: float) -> bool:
        """True when the nonce is ours, for this client, and not older than the lifetime."""
        p = len(self.prefix)
        if len(nonce) != p + 34 or not nonce.startswith(self.prefix):
            return False
        stamp = nonce[p : p + 10]
        try:
            issued = int(stamp, 16)
        except ValueError:
            return False
        if not (issued - 5 <= now <= issued + self.lifetime):
            return False
        key = (nonce, client)
        if key in self._verified:
            return True
        if not hmac.compare_digest(nonce[p + 10 :], self._mac(stamp, client)):
            return False
        if len(self._verified) >= VERIFIED_NONCES:
            self._verified.clear()
        self._verified.add(key)
        return True

    def advertises_password_algorithms(self, nonce: str) -> bool:
        return nonce.startswith(NONCE_COOKIE) and nonce[9:13] == FEATURES_PASSWORD_ALGORITHMS


@dataclass(frozen=True, slots=True)
class KeyLookup:
    """The candidate keys for a username; empty ``keys`` with ``refusal`` when there are none."""

    keys: tuple[bytes, ...]
    #: The account the quota counts against (the user part of a REST username).
    account: str
    refusal: str = ""


@dataclass(slots=True)
class _StaticUser:
    keys: dict[int, bytes] = field(default_factory=dict)


class CredentialStore:
    """Static users and REST secrets for one realm; answers "which keys may sign this request"."""

    def __init__(self, realm: str, max_rest_lifetime: float = 7 * 86400) -> None:
        """``max_rest_lifetime``: a REST credential expiring further ahead than this is refused
        (a far-future expiry is a credential that never dies)."""
        self.realm = realm
        self.max_rest_lifetime = max_rest_lifetime
        self._users: dict[str, _StaticUser] = {}
        self._userhash: dict[bytes, str] = {}
        self._secrets: list[str] = []
        #: (REST username, algorithm) -> keys, one per secret: every request of an allocation
        #: carries the same username, and a key costs an HMAC, a string preparation and a hash.
        #: Bounded: emptied when full, and whenever the secrets change.
        self._rest_keys: dict[tuple[str, int], tuple[bytes, ...]] = {}

    # -- configuration -------------------------------------------------------------------------
    def add_user(self, username: str, password: str) -> None:
        """Keep the long-term keys (MD5, SHA-256) derived from the password, never the password."""
        self._users[username] = _StaticUser(
            {
                ALGORITHM_MD5: long_term_key(username, self.realm, password, ALGORITHM_MD5),
                ALGORITHM_SHA256: long_term_key(username, self.realm, password, ALGORITHM_SHA256),
            }
        )
        self._index_userhash(username)

    def add_user_key(self, username: str, md5_key: bytes) -> None:
        """A precomputed MD5 key (coturn's ``user:0x<hex>`` form): the password is never known."""
        if len(md5_key) != 16:
            raise ValueError("an MD5 long-term key is 16 bytes")
        self._users[username] = _StaticUser({ALGORITHM_MD5: md5_key})
        self._index_userhash(username)

    def user_keys(self) -> dict[str, dict[int, bytes]]:
        """Every static user's keys by algorithm (to merge with users from the data store)."""
        return {name: dict(user.keys) for name, user in self._users.items()}

    def load_users(self, users: dict[str, dict[int, bytes]]) -> None:
        """Replace every static user at once (a refresh from the data store)."""
        self._users = {name: _StaticUser(dict(keys)) for name, keys in users.items()}
        self._userhash = {}
        for name in users:
            self._index_userhash(name)

    def remove_user(self, username: str) -> None:
        self._users.pop(username, None)
        self._userhash = {h: u for h, u in self._userhash.items() if u != username}

    def _index_userhash(self, username: str) -> None:
        digest = hashlib.sha256(f"{username}:{self.realm}".encode()).digest()
        self._userhash[digest] = username

    def set_secrets(self, secrets: Iterable[str]) -> None:
        self._secrets = [s for s in secrets if s]
        self._rest_keys = {}

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(self._users)

    def username_for_hash(self, userhash: bytes) -> str | None:
        return self._userhash.get(userhash)

    # -- lookup --------------------------------------------------------------------------------
    def lookup(self, username: str, algorithm: int, now: float) -> KeyLookup:
        user = self._users.get(username)
        if user is not None:
            key = user.keys.get(algorithm)
            if key is None:
                return KeyLookup((), username, "no key for that password algorithm")
            return KeyLookup((key,), username)
        rest = parse_rest_username(username) if self._secrets else None
        if rest is None:
            return KeyLookup((), username, "unknown user")
        expiry, account = rest
        if expiry < now:
            return KeyLookup((), account, f"REST credential expired {int(now - expiry)} s ago")
        if expiry - now > self.max_rest_lifetime:
            return KeyLookup(
                (),
                account,
                f"REST credential lifetime {int(expiry - now)} s exceeds the maximum "
                f"{int(self.max_rest_lifetime)} s",
            )
        keys = self._rest_keys.get((username, algorithm))
        if keys is None:
            keys = tuple(
                long_term_key(username, self.realm, rest_password(secret, username), algorithm)
                for secret in self._secrets
            )
            if len(self._rest_keys) >= REST_KEYS:
                self._rest_keys.clear()
            self._rest_keys[(username, algorithm)] = keys
        return KeyLookup(keys, account)
