"""ACME TLS-ALPN-01 (RFC 8737) on the TLS port that also serves ``turns:``.

The CA's validator opens a TLS connection offering only the ALPN protocol ``acme-tls/1`` and
names the domain in SNI; it must be shown a self-signed certificate carrying the key
authorization's digest. Every other client, for the same name at the same moment, must keep
getting the real certificate. OpenSSL chooses the certificate before Python could see the
offered ALPN list, so the ClientHello is read here, as it passes through the memory BIO of
asyncio's TLS transport, before OpenSSL parses it: only a hello offering ``acme-tls/1`` for a
domain with a pending challenge file switches its connection to the challenge certificate.

Challenge files live in one directory, one ``<domain>.pem`` (certificate and key) each, so
every worker process answers a challenge the process running the ACME client wrote.
"""

from __future__ import annotations

import logging
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("iceward.tls")

#: The ALPN protocol of TLS-ALPN-01 validation connections.
ACME_TLS_ALPN = "acme-tls/1"
#: Bytes of a ClientHello looked at, at most (a hello is one TLS record: 16 KiB + header).
MAX_HELLO = 5 + 16384


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None
    alpn: tuple[str, ...]


def challenge_file(directory: Path, domain: str) -> Path:
    """Where the TLS-ALPN-01 certificate and key for ``domain`` are while it is validated."""
    return directory / f"{domain.lower()}.pem"


def parse_client_hello(data: bytes) -> ClientHello | None:
    """SNI and ALPN of the ClientHello at the start of ``data``; None while the first record
    is incomplete. ValueError: not a ClientHello, or one that does not parse."""
    if len(data) < 5:
        return None
    if data[0] != 0x16:
        raise ValueError("not a TLS handshake record")
    end = 5 + struct.unpack_from("!H", data, 3)[0]
    if end > MAX_HELLO:
        raise ValueError("a TLS record longer than TLS allows")
    if len(data) < end:
        return None
    body = memoryview(data)[5:end]
    try:
        return _hello(body)
    except (IndexError, struct.error):
        raise ValueError("a ClientHello that does not parse") from None


def _hello(body: memoryview) -> ClientHello:
    if body[0] != 0x01:
        raise ValueError("not a ClientHello")
    pos = 4 + 2 + 32  # handshake header, legacy version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher suites
    pos += 1 + body[pos]  # compression methods
    if pos >= len(body):
        return ClientHello(None, ())
    end = min(len(body), pos + 2 + struct.unpack_from("!H", body, pos)[0])
    pos += 2
    name: str | None = None
    alpn: list[str] = []
    while pos + 4 <= end:
        kind, size = struct.unpack_from("!HH", body, pos)
        value = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if kind == 0x0000 and len(value) > 5 and value[2] == 0:  # server_name, host_name
            length = struct.unpack_from("!H", value, 3)[0]
            name = bytes(value[5 : 5 + length]).decode("ascii", "replace").lower()
        elif kind == 0x0010:  # application_layer_protocol_negotiation
            at = 2
            while at < len(value):
                length = value[at]
                alpn.append(bytes(value[at + 1 : at + 1 + length]).decode("ascii", "replace"))
                at += 1 + length
    return ClientHello(name, tuple(alpn))


def challenge_context(directory: Path, hello: ClientHello) -> ssl.SSLContext | None:
    """The context answering this hello's TLS-ALPN-01 validation, or None: not a validation
    (no ``acme-tls/1``, no SNI) or no challenge pending for that name."""
    if ACME_TLS_ALPN not in hello.alpn or not hello.server_name:
        return None
    name = hello.server_name
    if "/" in name or name.startswith("."):
        return None
    path = challenge_file(directory, name)
    if not path.is_file():  # anyone may offer acme-tls/1: not worth more than a debug line
        log.debug("TLS-ALPN-01 validation for %s, but no challenge is pending for it", name)
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(path)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS-ALPN-01 challenge file %s does not load: %s", path, exc)
        return None
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    log.info("answering the TLS-ALPN-01 validation for %s", name)
    return ctx


class _HelloReadingObject(ssl.SSLObject):
    """An SSLObject that looks at the ClientHello in its incoming BIO before OpenSSL does."""

    _hello_bio: ssl.MemoryBIO | None
    _hello: bytearray
    _challenges: Path

    def do_handshake(self) -> None:
        bio = self._hello_bio
        if bio is not None:
            data = bio.read()
            bio.write(data)  # put back, in order: the BIO was drained by the read
            self._hello += data
            try:
                hello = parse_client_hello(bytes(self._hello))
            except ValueError:
                hello, self._hello_bio = None, None  # OpenSSL will say what is wrong
            if hello is not None:
                self._hello_bio = None
                ctx = challenge_context(self._challenges, hello)
                if ctx is not None:
                    self.context = ctx
        super().do_handshake()


class AcmeAwareContext(ssl.SSLContext):
    """A server context that answers TLS-ALPN-01 validations from ``challenges`` (a directory
    of :func:`challenge_file` files); every other connection is served as by a plain one."""

    challenges: Path

    def wrap_bio(  # the same arguments, passed on
        self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ) -> ssl.SSLObject:
        obj = super().wrap_bio(incoming, outgoing, *args, **kwargs)
        if isinstance(obj, _HelloReadingObject):
            obj._hello_bio = incoming if obj.server_side else None
            obj._hello = bytearray()
            obj._challenges = self.challenges
        return obj


def acme_aware(challenges: Path) -> AcmeAwareContext:
    """A new TLS server context answering TLS-ALPN-01 validations from ``challenges``."""
    ctx = AcmeAwareContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.challenges = challenges
    ctx.sslobject_class = _HelloReadingObject
    return ctx
