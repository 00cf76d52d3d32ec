"""An asyncio STUN/TURN client over UDP, TCP and TLS on the sans-IO codec of :mod:`iceward.stun`.

:class:`StunClient` owns one connection and matches responses to requests by transaction id
(retransmitting over UDP as RFC 8489 asks); relayed data (ChannelData, Data indications) goes to a
queue. :class:`TurnSession` adds long-term credentials: the unsigned request, the 401 challenge with
realm and nonce, the signed retry, and a fresh nonce on 438. Every step is written to a transcript
in plain words, as evidence. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from iceward.doctor.evidence import fmt_addr
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key
from iceward.stun.message import Message, StunError, encode_message, parse_message

Address = tuple[str, int]

#: What each error code means for the person reading the report.
ERROR_WORDS: dict[int, str] = {
    300: "the server redirects to another server (ALTERNATE-SERVER)",
    400: "the server could not parse the request",
    401: "the server did not accept the username and credential",
    403: "the server's policy forbids it",
    420: "the server does not understand an attribute of the request",
    437: "allocation mismatch: an allocation already exists on this 5-tuple, or none does",
    438: "the nonce expired; a client retries with the new one",
    440: "the relay does not support that address family",
    441: "the username differs from the one the allocation was made with",
    442: "the server does not relay that transport protocol",
    443: "the peer's address family differs from the relayed address's",
    486: "this user has reached its allocation quota",
    500: "the server failed internally",
    508: "the server has no free relay port or allocation slot",
}


def describe_error(code: int, reason: str) -> str:
    """``401 Unauthenticated (the server did not accept ...)``."""
    name = reason or C.ERROR_REASONS.get(code, "")
    words = ERROR_WORDS.get(code)
    return f"{code} {name}".strip() + (f" ({words})" if words else "")


class ProbeError(Exception):
    """The network did not deliver: no answer, refused, reset; the message says which."""


class TurnError(Exception):
    """The server answered a request with an error response."""

    def __init__(self, method: int, code: int, reason: str, signed: bool) -> None:
        self.method = method
        self.code = code
        self.reason = reason
        self.signed = signed
        name = C.METHOD_NAMES.get(method, "request")
        super().__init__(f"{name} → {describe_error(code, reason)}")


# -- links: one connection each ------------------------------------------------------------------

FrameHandler = Callable[[bytes], None]
FailureHandler = Callable[[str], None]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_frame: FrameHandler, on_failure: FailureHandler, port: int) -> None:
        self.on_frame = on_frame
        self.on_failure = on_failure
        self.port = port

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_frame(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):
            self.on_failure(f"ICMP port unreachable: nothing listens on UDP port {self.port}")
        else:
            self.on_failure(
                f"UDP error: {exc.strerror or exc}"
                if isinstance(exc, OSError)
                else f"UDP error: {exc}"
            )


class Link:
    """One connection to a server: ``send`` frames, frames arrive through ``on_frame``."""

    reliable: bool = False
    peercert_der: bytes | None = None
    tls_version: str = ""
    local: Address = ("", 0)

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class UdpLink(Link):
    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        self.local = transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)

    def close(self) -> None:
        self.transport.close()


class StreamLink(Link):
    reliable = True

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_frame: FrameHandler,
        on_failure: FailureHandler,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.local = writer.get_extra_info("sockname")[:2]
        obj = writer.get_extra_info("ssl_object")
        if obj is not None:
            self.peercert_der = obj.getpeercert(binary_form=True)
            self.tls_version = obj.version() or ""
        self._task = asyncio.get_running_loop().create_task(self._pump(on_frame, on_failure))

    async def _pump(self, on_frame: FrameHandler, on_failure: FailureHandler) -> None:
        try:
            while True:
                head = await self.reader.readexactly(4)
                if head == b"HTTP":
                    on_failure(
                        "the server answered in HTTP, not STUN/TURN (a web server on this port?)"
                    )
                    return
                length = struct.unpack_from("!H", head, 2)[0]
                if 0x40 <= head[0] <= 0x7F:  # ChannelData, padded to 4 on streams
                    body = await self.reader.readexactly(length + (-length & 3))
                    on_frame(head + body[:length])
                else:
                    on_frame(head + await self.reader.readexactly(16 + length))
        except asyncio.IncompleteReadError:
            on_failure("the server closed the connection")
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            on_failure(f"connection lost: {exc}")

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _os_reason(exc: OSError, transport: str, address: Address) -> str:
    where = f"{transport.upper()} {fmt_addr(address)}"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connection refused (nothing listens on that port)"
    if exc.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return f"{where}: no route from here ({exc.strerror})"
    return f"{where}: {exc.strerror or exc}"


# -- the client ---------------------------------------------------------------------------------


class StunClient:
    """Requests and responses over one link; relayed payloads land in :attr:`data`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.link: Link | None = None
        self.pending: dict[bytes, asyncio.Future[Message]] = {}
        #: (channel number or None for a Data indication, payload)
        self.data: asyncio.Queue[tuple[int | None, bytes]] = asyncio.Queue()
        self.failure: str | None = None
        self.connect_ms: float | None = None

    @classmethod
    async def connect(
        cls,
        transport: str,
        address: Address,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> StunClient:
        """Open a UDP socket, a TCP connection or a TLS session toward ``address``.

        Raises :class:`ProbeError` with the reason, or ``ssl.SSLCertVerificationError``.
        """
        client = cls(timeout)
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            if transport == "udp":
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(client._on_frame, client._on_failure, address[1]),
                    remote_addr=address,
                    family=_family(address[0]),
                )
                client.link = UdpLink(udp)
            else:
                context = tls if transport == "tls" else None
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        address[0],
                        address[1],
                        ssl=context,
                        server_hostname=(server_hostname or address[0]) if context else None,
                        ssl_handshake_timeout=timeout if context else None,
                    ),
                    timeout,
                )
                client.link = StreamLink(reader, writer, client._on_frame, client._on_failure)
        except TimeoutError:
            what = "TLS handshake" if transport == "tls" else "TCP connect"
            raise ProbeError(f"{what} to {fmt_addr(address)}: no answer in {timeout:g} s") from None
        except ssl.SSLCertVerificationError:
            raise
        except ssl.SSLError as exc:
            raise ProbeError(
                f"TLS handshake with {fmt_addr(address)} failed: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise ProbeError(_os_reason(exc, transport, address)) from None
        client.connect_ms = (time.perf_counter() - start) * 1000
        return client

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        self._on_failure("closed")

    # -- incoming ----------------------------------------------------------------------------
    def _on_frame(self, data: bytes) -> None:
        if not data:
            return
        if 0x40 <= data[0] <= 0x7F:
            if len(data) >= 4:
                number, length = struct.unpack_from("!HH", data)
                self.data.put_nowait((number, data[4 : 4 + length]))
            return
        try:
            msg = parse_message(data)
        except StunError:
            return
        if msg.cls == C.INDICATION:
            if msg.method == C.DATA:
                self.data.put_nowait((None, msg.get(C.DATA_ATTR) or b""))
            return
        future = self.pending.get(msg.transaction_id)
        if future is not None and not future.done():
            future.set_result(msg)

    def _on_failure(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ProbeError(reason))

    # -- outgoing ----------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.link is None:
            raise ProbeError("not connected")
        self.link.send(data)

    async def transact(self, txid: bytes, data: bytes, timeout: float | None = None) -> Message:
        """Send a request and wait for its response; retransmit over UDP (RTO 250 ms, doubling)."""
        if self.failure is not None:
            raise ProbeError(self.failure)
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        self.pending[txid] = future
        deadline = loop.time() + timeout
        rto = 0.25
        sent = 0
        try:
            while True:
                self.send(data)
                sent += 1
                remaining = deadline - loop.time()
                wait = (
                    remaining
                    if self.link is not None and self.link.reliable
                    else min(rto, remaining)
                )
                try:
                    return await asyncio.wait_for(asyncio.shield(future), max(wait, 0.0))
                except TimeoutError:
                    if loop.time() >= deadline - 1e-3:
                        tries = f" ({sent} tries)" if sent > 1 else ""
                        raise ProbeError(f"no answer in {timeout:g} s{tries}") from None
                rto *= 2
        finally:
            self.pending.pop(txid, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # mark a failure as seen

    async def binding(self) -> tuple[Address | None, float]:
        """A Binding request: the server-reflexive address (XOR-MAPPED-ADDRESS) and the RTT."""
        txid = os.urandom(12)
        start = time.perf_counter()
        reply = await self.transact(
            txid, encode_message(C.BINDING, C.REQUEST, txid, fingerprint=True)
        )
        rtt = (time.perf_counter() - start) * 1000
        if reply.cls != C.SUCCESS:
            code, reason = _error_of(reply)
            raise TurnError(C.BINDING, code, reason, False)
        return _mapped(reply), rtt


def _error_of(reply: Message) -> tuple[int, str]:
    try:
        return A.decode_error_code(reply.get(C.ERROR_CODE) or b"")
    except StunError:
        return 500, "malformed ERROR-CODE"


def _mapped(reply: Message) -> Address | None:
    try:
        value = reply.get(C.XOR_MAPPED_ADDRESS)
        if value is not None:
            return A.decode_xor_address(value, reply.transaction_id)
        value = reply.get(C.MAPPED_ADDRESS)
        return A.decode_address(value) if value is not None else None
    except StunError:
        return None


class TurnSession:
    """Long-term-credential requests over a :class:`StunClient`, with a transcript."""

    def __init__(self, client: StunClient, username: str, password: str) -> None:
        self.client = client
        self.username = username
        self.password = password
        self.realm = ""
        self.nonce: str | None = None
        self.key = b""
        self.software: str | None = None
        self.transcript: list[str] = []
        self.relayed: list[Address] = []
        self.mapped: Address | None = None
        self.lifetime: int | None = None
        self.allocated = False

    def note(self, line: str) -> None:
        self.transcript.append(line)

    def _take_challenge(self, reply: Message) -> None:
        realm = reply.get(C.REALM)
        nonce = reply.get(C.NONCE)
        if realm is not None:
            self.realm = realm.decode("utf-8", "replace")
        self.nonce = nonce.decode("utf-8", "replace") if nonce is not None else ""
        self.key = long_term_key(self.username, self.realm, self.password)

    async def request(
        self, method: int, attrs: list[tuple[int, bytes]], txid: bytes | None = None
    ) -> Message:
        """Send ``method`` signed once challenged; return the success response or raise."""
        name = C.METHOD_NAMES.get(method, hex(method))
        for _ in range(4):
            tid = txid or os.urandom(12)
            signed = self.nonce is not None
            full = list(attrs)
            if signed:
                full += [
                    (C.USERNAME, self.username.encode()),
                    (C.REALM, self.realm.encode()),
                    (C.NONCE, (self.nonce or "").encode()),
                ]
            data = encode_message(
                method,
                C.REQUEST,
                tid,
                full,
                integrity_key=self.key if signed else None,
                fingerprint=True,
            )
            reply = await self.client.transact(tid, data)
            software = reply.get(C.SOFTWARE)
            if software is not None and self.software is None:
                self.software = software.decode("utf-8", "replace")[:80]
            if reply.cls == C.SUCCESS:
                return reply
            code, reason = _error_of(reply)
            if code == 401 and not signed:
                self._take_challenge(reply)
                self.note(f"{name} → 401 challenge (realm {self.realm!r}, nonce received)")
                continue
            if code == 438:
                self._take_challenge(reply)
                self.note(f"{name} → 438 Stale Nonce: retried with the new nonce")
                continue
            self.note(f"{name}{' (signed)' if signed else ''} → {describe_error(code, reason)}")
            raise TurnError(method, code, reason, signed)
        self.note(f"{name}: the server kept challenging; gave up after 4 tries")
        raise TurnError(method, 401, "challenged again and again", True)

    async def allocate(self, family: int | None = None) -> list[Address]:
        """Allocate a UDP relay; the relayed addresses (two for a dual allocation)."""
        txid = os.urandom(12)
        attrs = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))]
        if family is not None:
            attrs.append((C.REQUESTED_ADDRESS_FAMILY, A.encode_one_byte(family)))
        reply = await self.request(C.ALLOCATE, attrs, txid)
        relayed = []
        try:
            relayed = [
                A.decode_xor_address(v, reply.transaction_id)
                for v in reply.get_all(C.XOR_RELAYED_ADDRESS)
            ]
            lifetime = reply.get(C.LIFETIME)
            self.lifetime = A.decode_u32(lifetime) if lifetime is not None else None
        except StunError as exc:
            self.note(f"Allocate → success with a malformed attribute: {exc}")
        self.mapped = _mapped(reply)
        self.relayed = relayed
        self.allocated = True
        shown = ", ".join(fmt_addr(r) for r in relayed) or "none"
        self.note(f"Allocate (signed) → success: relayed {shown}, lifetime {self.lifetime} s")
        return relayed

    async def create_permission(self, peer: Address) -> None:
        txid = os.urandom(12)
        await self.request(
            C.CREATE_PERMISSION, [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid))], txid
        )

    async def channel_bind(self, number: int, peer: Address) -> None:
        txid = os.urandom(12)
        await self.request(
            C.CHANNEL_BIND,
            [
                (C.CHANNEL_NUMBER, A.encode_channel_number(number)),
                (C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)),
            ],
            txid,
        )

    def send_channel_data(self, number: int, payload: bytes) -> None:
        pad = (
            b"\x00" * (-len(payload) & 3) if self.client.link and self.client.link.reliable else b""
        )
        self.client.send(struct.pack("!HH", number, len(payload)) + payload + pad)

    async def release(self) -> None:
        """Refresh with lifetime 0 (frees the relay port at once), then close; never raises."""
        if self.allocated and self.client.failure is None:
            with contextlib.suppress(ProbeError, TurnError, StunError, OSError):
                await asyncio.wait_for(
                    self.request(C.REFRESH, [(C.LIFETIME, A.encode_u32(0))]),
                    min(self.client.timeout, 1.0),
                )
        self.client.close()
