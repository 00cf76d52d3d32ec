"""The cached-pad HMAC is the standard HMAC, for every key length and both algorithms."""

from __future__ import annotations

import hmac

from hypothesis import given
from hypothesis import strategies as st

from iceward.stun import hmacs


@given(key=st.binary(max_size=200), data=st.binary(max_size=600))
def test_equals_stdlib_hmac(key: bytes, data: bytes) -> None:
    for algorithm in ("sha1", "sha256"):
        assert hmacs.hmac_digest(key, data, algorithm) == hmac.digest(key, data, algorithm)
        # A second call reuses the kept states: still the same, and they were not consumed.
        assert hmacs.hmac_digest(key, data, algorithm) == hmac.digest(key, data, algorithm)


def test_key_table_is_bounded() -> None:
    for i in range(hmacs.MAX_KEYS + 10):
        hmacs.hmac_digest(i.to_bytes(4, "big"), b"x", "sha1")
    assert len(hmacs._pads) <= hmacs.MAX_KEYS
    assert hmacs.hmac_digest(b"\x00\x00\x00\x01", b"x", "sha1") == hmac.digest(
        b"\x00\x00\x00\x01", b"x", "sha1"
    )
