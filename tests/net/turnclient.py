"""A small blocking TURN client over real UDP or TCP sockets, for end-to-end server tests."""

from __future__ import annotations

import os
import socket
import struct

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key
from iceward.stun.message import Message, encode_message, parse_message

Address = tuple[str, int]


def read_stun(sock: socket.socket) -> bytes:
    """One STUN message off a stream socket (header first, then its length)."""
    data = b""
    while len(data) < 20 or len(data) < 20 + int.from_bytes(data[2:4], "big"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class TurnError(Exception):
    def __init__(self, code: int, reason: str, reply: Message | None = None) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        #: The error response itself (a 300's ALTERNATE-SERVER, its MESSAGE-INTEGRITY...).
        self.reply = reply


class BlockingTurnClient:
    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        transport: str = "udp",
        timeout: float = 2.0,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a stream socket already connected (through a proxy, over TLS) to use."""
        self.server = server
        self.username = username
        self.password = password
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        v6 = ":" in server[0]
        if sock is not None:
            self.sock = sock
        else:
            self.sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
        self.sock.settimeout(timeout)
        if sock is not None:
            pass
        elif transport == "udp":
            self.sock.bind(("::1" if v6 else "127.0.0.1", 0))
        else:
            self.sock.connect(server)
        self.realm = ""
        self.nonce = ""
        self._stream = bytearray()

    def close(self) -> None:
        self.sock.close()

    # -- framing -------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv_raw(self) -> bytes:
        if self.transport == "udp":
            return bytes(self.sock.recvfrom(65536)[0])
        while True:
            buf = self._stream
            if len(buf) >= 4:
                if 0x40 <= buf[0] <= 0x7F:
                    length = struct.unpack_from("!H", buf, 2)[0]
                    total = 4 + length + (-length & 3)
                else:
                    total = 20 + struct.unpack_from("!H", buf, 2)[0]
                if len(buf) >= total:
                    frame = bytes(buf[:total])
                    del buf[:total]
                    return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk

    # -- requests ------------------------------------------------------------------------------
    def _key(self) -> bytes:
        return long_term_key(self.username, self.realm, self.password)

    def request_once(self, method: int, attrs: list[tuple[int, bytes]]) -> Message:
        """One request signed with the nonce held now; the reply as it came (no retry on 438)."""
        txid = os.urandom(12)
        full = [
            *attrs,
            (C.USERNAME, self.username.encode()),
            (C.REALM, self.realm.encode()),
            (C.NONCE, self.nonce.encode()),
        ]
        self.send_raw(
            encode_message(
                method, C.REQUEST, txid, full, integrity_key=self._key(), fingerprint=True
            )
        )
        while True:
            reply = parse_message(self.recv_raw())
            if reply.transaction_id == txid:
                return reply

    def request(self, method: int, attrs: list[tuple[int, bytes]], txid: bytes) -> Message:
        for _ in range(3):
            signed = bool(self.nonce)
            full = list(attrs)
            if signed:
                full += [
                    (C.USERNAME, self.username.encode()),
                    (C.REALM, self.realm.encode()),
                    (C.NONCE, self.nonce.encode()),
                ]
            self.send_raw(
                encode_message(
                    method,
                    C.REQUEST,
                    txid,
                    full,
                    integrity_key=self._key() if signed else None,
                    fingerprint=True,
                )
            )
            while True:
                reply = parse_message(self.recv_raw())
                if reply.transaction_id == txid:
                    break
            if reply.cls == C.SUCCESS:
                return reply
            code, reason = A.decode_error_code(reply.get(C.ERROR_CODE) or b"")
            if code in (401, 438) and (code == 438 or not signed):
                self.realm = (reply.get(C.REALM) or b"").decode()
                self.nonce = (reply.get(C.NONCE) or b"").decode()
                continue
            raise TurnError(code, reason, reply)
        raise TurnError(401, "authentication failed")

    def allocate(self, *extra: tuple[int, bytes]) -> Address:
        return self.allocate_all(*extra)[0]

    def allocate_all(self, *extra: tuple[int, bytes]) -> list[Address]:
        """Allocate; every relayed address (two for a dual-family allocation)."""
        txid = os.urandom(12)
        attrs = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP)), *extra]
        reply = self.request(C.ALLOCATE, attrs, txid)
        return [A.decode_xor_address(v, txid) for v in reply.get_all(C.XOR_RELAYED_ADDRESS)]

    def create_permission(self, peer: Address) -> None:
        txid = os.urandom(12)
        self.request(
            C.CREATE_PERMISSION, [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid))], txid
        )

    def channel_bind(self, number: int, peer: Address) -> None:
        txid = os.urandom(12)
        self.request(
            C.CHANNEL_BIND,
            [
                (C.CHANNEL_NUMBER, A.encode_channel_number(number)),
                (C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)),
            ],
            txid,
        )

    def refresh(self, lifetime: int) -> int:
        """Refresh; returns the lifetime the server granted."""
        reply = self.request(C.REFRESH, [(C.LIFETIME, A.encode_u32(lifetime))], os.urandom(12))
        return A.decode_u32(reply.get(C.LIFETIME) or b"")

    def send_indication(self, peer: Address, data: bytes) -> None:
        txid = os.urandom(12)
        attrs = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)), (C.DATA_ATTR, data)]
        self.send_raw(encode_message(C.SEND, C.INDICATION, txid, attrs))

    def send_channel_data(self, number: int, data: bytes) -> None:
        pad = b"\x00" * (-len(data) & 3) if self.transport != "udp" else b""
        self.send_raw(struct.pack("!HH", number, len(data)) + data + pad)

    def receive_data(self) -> tuple[int | None, bytes]:
        """Next relayed payload: (channel number, data) or (None, data) for a Data indication."""
        while True:
            frame = self.recv_raw()
            if 0x40 <= frame[0] <= 0x7F:
                number, length = struct.unpack_from("!HH", frame)
                return number, frame[4 : 4 + length]
            msg = parse_message(frame)
            if msg.method == C.DATA and msg.cls == C.INDICATION:
                return None, msg.get(C.DATA_ATTR) or b""
