"""TLS-ALPN-01 on a shared TLS port: only a ClientHello offering ``acme-tls/1`` for a name with
a pending challenge is shown the challenge certificate; everything else, the real one. Real
OpenSSL handshakes over loopback, on asyncio's own loop and on uvloop."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from iceward.autocert.client import ACME_IDENTIFIER, tls_alpn_certificate
from iceward.net.tls import server_context
from iceward.net.tlsalpn import (
    ACME_TLS_ALPN,
    ClientHello,
    challenge_context,
    challenge_file,
    parse_client_hello,
)

from ..conftest import HOST, make_test_ca

DOMAIN = "turn.iceward.test"


def client_hello(name: str | None, alpn: list[str]) -> bytes:
    """The ClientHello OpenSSL sends for ``name`` (SNI) and ``alpn``."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    if name is None:
        ctx.check_hostname = False
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_the_hello_says_name_and_protocols() -> None:
    hello = client_hello(DOMAIN, [ACME_TLS_ALPN])
    assert parse_client_hello(hello) == ClientHello(DOMAIN, (ACME_TLS_ALPN,))
    assert parse_client_hello(client_hello("Other.Example", ["h2", "stun.turn"])) == ClientHello(
        "other.example", ("h2", "stun.turn")
    )
    assert parse_client_hello(hello[:40]) is None  # more to come
    with pytest.raises(ValueError):
        parse_client_hello(b"\x00\x01" + bytes(40))  # STUN, not TLS


@given(st.binary(max_size=600))
def test_hostile_hello_bytes_are_refused_cleanly(data: bytes) -> None:
    try:
        parse_client_hello(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data)
    except ValueError:
        pass


def test_only_a_validation_for_a_pending_name_gets_the_challenge(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"token.thumbprint").digest()
    challenge_file(tmp_path, DOMAIN).write_bytes(tls_alpn_certificate(DOMAIN, digest))
    assert challenge_context(tmp_path, ClientHello(DOMAIN, (ACME_TLS_ALPN,))) is not None
    assert challenge_context(tmp_path, ClientHello(DOMAIN, ("h2", "stun.turn"))) is None
    assert challenge_context(tmp_path, ClientHello(DOMAIN, ())) is None
    assert challenge_context(tmp_path, ClientHello("other.test", (ACME_TLS_ALPN,))) is None
    assert challenge_context(tmp_path, ClientHello("../../etc", (ACME_TLS_ALPN,))) is None


def test_challenge_certificate_is_rfc_8737() -> None:
    digest = hashlib.sha256(b"key authorization").digest()
    cert = x509.load_pem_x509_certificate(tls_alpn_certificate(DOMAIN, digest))
    extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == b"\x04\x20" + digest  # DER OCTET STRING
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [DOMAIN]


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_shared_port_serves_challenge_and_real_certificate(
    tmp_path: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    real = make_test_ca(tmp_path / "ca", (DOMAIN,))
    challenges = tmp_path / "challenges"
    challenges.mkdir()
    digest = hashlib.sha256(b"token.thumbprint").digest()
    challenge_file(challenges, DOMAIN).write_bytes(tls_alpn_certificate(DOMAIN, digest))
    server_ctx = server_context(real.cert, real.key, challenges)

    async def handshake(port: int, alpn: list[str]) -> tuple[x509.Certificate, str | None]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the validator checks the extension, not a chain
        if alpn:
            ctx.set_alpn_protocols(alpn)
        _, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=DOMAIN)
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        protocol = tls.selected_alpn_protocol()
        writer.close()
        return x509.load_der_x509_certificate(der), protocol

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            cert, protocol = await handshake(port, [ACME_TLS_ALPN])
            assert protocol == ACME_TLS_ALPN
            assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
            for alpn in ([], ["stun.turn"], ["h2", "http/1.1"]):
                cert, protocol = await handshake(port, alpn)
                assert cert.issuer.rfc4514_string() == "CN=iceward test CA", alpn
        finally:
            server.close()

    loop = loop_factory()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
