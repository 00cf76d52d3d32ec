"""Stateless nonces and credential lookup."""

from __future__ import annotations

from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key
from iceward.turn.auth import VERIFIED_NONCES, CredentialStore, NonceManager
from iceward.turn.credentials import mint_rest_credential, parse_rest_username, rest_password


def test_nonce_round_trip_and_limits() -> None:
    nonces = NonceManager(b"key", lifetime=600)
    client = ("203.0.113.1", 5000)
    nonce = nonces.issue(client, 1000.0)
    assert nonces.check(nonce, client, 1000.0)
    assert nonces.check(nonce, client, 1600.0)
    assert not nonces.check(nonce, client, 1601.0)  # stale
    assert not nonces.check(nonce, ("203.0.113.1", 5001), 1000.0)  # other client
    assert not nonces.check(nonce[:-1] + ("0" if nonce[-1] != "0" else "1"), client, 1000.0)
    assert not NonceManager(b"other", 600).check(nonce, client, 1000.0)  # other server key
    assert not nonces.check("garbage", client, 1000.0)
    assert nonces.advertises_password_algorithms(nonce)


def test_remembered_nonces_are_bounded_and_still_checked() -> None:
    """A nonce whose MAC checked out is remembered for its client only, never past its
    lifetime, and the memory is emptied when full."""
    nonces = NonceManager(b"key", lifetime=600)
    clients = [("198.51.100.7", port) for port in range(1, VERIFIED_NONCES + 2)]
    issued = [nonces.issue(c, 1000.0) for c in clients]
    for nonce, client in zip(issued, clients, strict=True):
        assert nonces.check(nonce, client, 1000.0)
        assert nonces.check(nonce, client, 1001.0)
        assert not nonces.check(nonce, ("198.51.100.8", client[1]), 1001.0)
        assert not nonces.check(nonce, client, 1601.0)
    assert 0 < len(nonces._verified) <= VERIFIED_NONCES


def test_another_worker_with_the_same_key_accepts_the_nonce() -> None:
    a, b = NonceManager(b"shared", 600), NonceManager(b"shared", 600)
    assert b.check(a.issue(("198.51.100.1", 1), 50.0), ("198.51.100.1", 1), 60.0)


def test_static_user_keys_never_keep_the_password() -> None:
    store = CredentialStore("realm")
    store.add_user("alice", "wonderland")
    lookup = store.lookup("alice", C.ALGORITHM_MD5, 0)
    assert lookup.keys == (long_term_key("alice", "realm", "wonderland"),)
    sha = store.lookup("alice", C.ALGORITHM_SHA256, 0)
    assert sha.keys == (long_term_key("alice", "realm", "wonderland", C.ALGORITHM_SHA256),)
    assert "wonderland" not in repr(store.__dict__)
    assert store.lookup("bob", C.ALGORITHM_MD5, 0).refusal == "unknown user"


def test_rest_lookup_offers_one_key_per_secret_and_flags_expiry() -> None:
    store = CredentialStore("realm")
    store.set_secrets(["one", "two"])
    cred = mint_rest_credential("two", "bob", 60, 1000.0)
    lookup = store.lookup(cred.username, C.ALGORITHM_MD5, 1000.0)
    assert lookup.account == "bob"
    assert long_term_key(cred.username, "realm", cred.password) in lookup.keys
    assert len(lookup.keys) == 2
    late = store.lookup(cred.username, C.ALGORITHM_MD5, 2000.0)
    assert late.keys == () and "expired" in late.refusal


def test_rest_keys_are_derived_again_when_the_secrets_rotate() -> None:
    store = CredentialStore("realm")
    store.set_secrets(["one"])
    cred = mint_rest_credential("two", "bob", 60, 1000.0)
    key = long_term_key(cred.username, "realm", cred.password)
    assert key not in store.lookup(cred.username, C.ALGORITHM_MD5, 1000.0).keys
    store.set_secrets(["two"])
    assert store.lookup(cred.username, C.ALGORITHM_MD5, 1000.0).keys == (key,)
    assert store.lookup(cred.username, C.ALGORITHM_MD5, 1000.0).keys == (key,)  # kept
    store.set_secrets(["three"])
    assert key not in store.lookup(cred.username, C.ALGORITHM_MD5, 1000.0).keys


def test_rest_credential_format() -> None:
    cred = mint_rest_credential("secret", "user", 3600, 1700000000.5)
    assert cred.username == "1700003600:user"
    assert cred.password == rest_password("secret", "1700003600:user")
    assert parse_rest_username(cred.username) == (1700003600, "user")
    assert parse_rest_username("1700003600") == (1700003600, "")
    assert parse_rest_username("alice") is None
    # The draft's password: base64(HMAC-SHA1(secret, username)), checked independently.
    import base64
    import hashlib
    import hmac

    mac = hmac.new(b"secret", b"1700003600:user", hashlib.sha1).digest()
    assert cred.password == base64.b64encode(mac).decode()
