"""The TURN server state machine (RFC 8656, UDP relays), sans-IO.

``handle_client`` takes bytes from a client five-tuple, ``handle_peer`` bytes arriving on a relay,
``handle_timer`` the passing of time; each returns :mod:`iceward.turn.events` outputs for the I/O
adapter to carry out. Relay sockets come from an injected :class:`RelayAllocator`, credentials from
a :class:`CredentialStore`, peer decisions from a :class:`PeerPolicy`: the core owns no socket,
no clock and no task.
"""

from __future__ import annotations

import heapq
import itertools
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from iceward import SOFTWARE as DEFAULT_SOFTWARE
from iceward.ratelimit import RateLimiter
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import verify_integrity
from iceward.stun.message import (
    Message,
    StunError,
    encode_attributes,
    encode_message,
    parse_message,
)
from iceward.turn.allocation import Address, Allocation, Channel, FiveTuple, Relay
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.drain import (
    NO_ALTERNATE,
    NO_ALTERNATE_REASON,
    AlternateLookup,
    redirect_attributes,
)
from iceward.turn.events import (
    AllocationCreated,
    AllocationRemoved,
    AuthRefused,
    ChannelInstalled,
    ChannelRemoved,
    DataConnectionBound,
    Output,
    PeerConnect,
    PeerRefused,
    ToClient,
    ToPeer,
)
from iceward.turn.policy import PeerPolicy, PolicyDecision
from iceward.turn.quota import LocalQuota, QuotaLedger
from iceward.turn.tcprelay import BOUND, CONNECTING, PENDING, ConnectionRefused, PeerConnections

_CHANNEL_HEADER = struct.Struct("!HH")
_ALLOCATE_REQUEST = struct.pack("!H", C.ALLOCATE)  # the class bits of a request are 0
_TURN_METHODS = frozenset(
    {C.ALLOCATE, C.REFRESH, C.CREATE_PERMISSION, C.CHANNEL_BIND, C.CONNECT, C.CONNECTION_BIND}
)
#: method -> its request counter, built once rather than formatted per request.
_REQUEST_COUNTER = {method: f"request.{name}" for method, name in C.METHOD_NAMES.items()}
_OWN_RELAY = PolicyDecision(False, "the allocation's own relayed address")
_OFFERED_ALGORITHMS = A.encode_password_algorithm(C.ALGORITHM_MD5) + A.encode_password_algorithm(
    C.ALGORITHM_SHA256
)


class RelayUnavailable(Exception):
    """No relay socket can be had (port range exhausted, family not configured, bad token)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class RelayAllocator(Protocol):
    """Hands out relays; the I/O adapter binds a real socket for each and keeps it under the
    relay's id, so the core never holds one."""

    def families(self) -> frozenset[int]: ...

    def allocate(
        self, family: int, *, even: bool = False, reserve_next: bool = False, tcp: bool = False
    ) -> tuple[Relay, bytes | None]:
        """A relay for ``family``; with ``reserve_next`` also a token for the next port; with
        ``tcp`` a listening TCP socket (RFC 6062) instead of a UDP one."""
        ...

    def allocate_reserved(self, token: bytes) -> Relay: ...

    def release(self, relay: Relay) -> None: ...


def family_of(host: str) -> int:
    return C.FAMILY_IPV6 if ":" in host else C.FAMILY_IPV4


@dataclass(slots=True)
class TurnConfig:
    realm: str = "iceward"
    software: str = DEFAULT_SOFTWARE
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    #: 0 means unlimited.
    max_allocations_per_user: int = 0
    max_allocations: int = 10_000
    max_permissions_per_allocation: int = 256
    #: Failed authentications answered per source IP per minute; beyond, requests are dropped.
    max_auth_failures: int = 60
    #: 401 challenges answered per UDP source IP per second (what a spoofed flood reflects).
    max_challenges: int = 500
    #: RFC 5780 NAT behaviour discovery: ((primary IP, port), (alternate IP, port)). Binding
    #: responses then carry OTHER-ADDRESS and RESPONSE-ORIGIN, and CHANGE-REQUEST is honoured by
    #: answering from the other IP and/or port (the I/O adapter listens on all four).
    change_addresses: tuple[Address, Address] | None = None
    #: RFC 6062 TCP allocations; None allows them, else the reason phrase of the 442 refusing
    #: them (with several workers a data connection may reach a worker not holding its peer).
    tcp_refusal: str | None = None
    #: Peer connections (pending or bound) per TCP allocation.
    max_tcp_connections: int = 32


@dataclass(slots=True)
class _Auth:
    username: str
    account: str
    key: bytes
    algorithm: int
    sha256_mac: bool


@dataclass(frozen=True, slots=True)
class NativeChallenge:
    """The core's 401 to an unauthenticated request, in pieces an I/O adapter can put together
    for a client at a given second: the ``head`` attributes (encoded), a NONCE of
    :meth:`NonceManager.issue`'s making (``nonce_prefix``, the second, the MAC with
    ``nonce_key``), the ``tail`` attributes, and FINGERPRINT when the request had one; for
    requests of ``methods`` without MESSAGE-INTEGRITY(-SHA256) received over UDP, at most
    ``per_second`` a second per source IP (the rest dropped)."""

    methods: frozenset[int]
    head: bytes
    tail: bytes
    nonce_prefix: bytes
    nonce_key: bytes
    per_second: float


class _Reply(Exception):
    """Raised inside request handlers to answer with an error response."""

    def __init__(
        self, code: int, reason: str | None = None, extra: tuple[tuple[int, bytes], ...] = ()
    ) -> None:
        super().__init__(reason or C.ERROR_REASONS.get(code, ""))
        self.code = code
        self.reason = reason
        self.extra = list(extra)


class TurnServer:
    """All allocations of one server (or one worker) and the protocol rules around them."""

    def __init__(
        self,
        config: TurnConfig,
        credentials: CredentialStore,
        nonces: NonceManager,
        policy: PeerPolicy,
        relays: RelayAllocator,
        *,
        quota: QuotaLedger | None = None,
        first_id: int = 1,
        id_step: int = 1,
    ) -> None:
        """``quota`` is shared by the workers of one server; ``first_id`` and ``id_step`` keep
        their allocation ids apart (worker i of N: i + 1, step N)."""
        self.config = config
        self.credentials = credentials
        self.nonces = nonces
        self.policy = policy
        self.relays = relays
        self._allocations: dict[FiveTuple, Allocation] = {}
        #: relay id -> its allocation, for ``handle_peer``.
        self._by_relay: dict[int, Allocation] = {}
        self._by_id: dict[int, Allocation] = {}
        self.quota: QuotaLedger = quota if quota is not None else LocalQuota()
        #: (deadline, allocation id): ids, not allocations, so a removed allocation is freed at
        #: once; its entries are skipped when they surface, or compacted away (see ``_remove``).
        self._timers: list[tuple[float, int]] = []
        self._stale_timers = 0
        self._failures = RateLimiter(config.max_auth_failures / 60.0, config.max_auth_failures)
        self._challenges = RateLimiter(config.max_challenges, config.max_challenges)
        #: Event counters for metrics: requests by method, errors by code, drops by reason.
        self.counters: Counter[str] = Counter()
        self._realm_bytes = config.realm.encode()
        self._ids = itertools.count(first_id, id_step)
        #: Set while the server drains: a new Allocate is sent to the alternate it names (300),
        #: or refused (508) when it names none; what exists keeps working (see turn.drain).
        self.drain: AlternateLookup | None = None
        #: (account, username) -> the reason phrase refusing a new allocation (a byte quota
        #: reached), or None to admit it; set by the adapter that keeps usage.
        self.admit: Callable[[str, str], str | None] | None = None
        #: RFC 6062 peer connections of the TCP allocations.
        self.tcp = PeerConnections(config.max_tcp_connections, (first_id - 1) % id_step, id_step)

    # -- queries -------------------------------------------------------------------------------
    @property
    def allocations(self) -> list[Allocation]:
        return list(self._allocations.values())

    def allocation_for(self, five_tuple: FiveTuple) -> Allocation | None:
        return self._allocations.get(five_tuple)

    def allocation_by_id(self, allocation_id: int) -> Allocation | None:
        return self._by_id.get(allocation_id)

    # -- input from clients --------------------------------------------------------------------
    def handle_client(
        self, data: bytes, five_tuple: FiveTuple, now: float, wall: float | None = None
    ) -> list[Output]:
        """Bytes of one STUN message or ChannelData message from a client. ``now`` drives the
        timers (a monotonic clock); ``wall`` (default ``now``) is the Unix time that nonces and
        REST credential expiries are stamped with."""
        if len(data) < 4:
            self.counters["drop.short"] += 1
            return []
        if 0x40 <= data[0] <= 0x7F:
            return self._channel_data_from_client(data, five_tuple, now)
        try:
            msg = parse_message(data)
        except StunError:
            self.counters["drop.malformed"] += 1
            return []
        if msg.cls == C.REQUEST:
            self.counters[_REQUEST_COUNTER.get(msg.method, "request.unknown")] += 1
            return self._request(msg, five_tuple, now, now if wall is None else wall)
        if msg.cls == C.INDICATION and msg.method == C.SEND:
            return self._send_indication(msg, five_tuple, now)
        self.counters["drop.unexpected"] += 1
        return []

    def close_client(self, five_tuple: FiveTuple, now: float) -> list[Output]:
        """A stream transport closed: its allocation ends with it (RFC 8656 section 3.1)."""
        return self.delete(five_tuple, "connection closed")

    def delete(self, five_tuple: FiveTuple, reason: str = "deleted by admin") -> list[Output]:
        alloc = self._allocations.get(five_tuple)
        out: list[Output] = []
        if alloc is not None:
            self._remove(alloc, reason, out)
        return out

    # -- input from peers ----------------------------------------------------------------------
    def handle_peer(self, relay_id: int, data: bytes, peer: Address, now: float) -> list[Output]:
        """A datagram from ``peer`` on relay ``relay_id``: ChannelData, Data indication, or
        dropped."""
        alloc = self._by_relay.get(relay_id)
        if alloc is None:
            return []
        channel = alloc.channels_by_peer.get(peer)
        ft = alloc.five_tuple
        if channel is not None and channel.expires > now:
            alloc.counters.packets_to_client += 1
            alloc.counters.bytes_to_client += len(data)
            return [ToClient(ft, encode_channel_data(channel.number, data, ft.is_stream))]
        if alloc.has_permission(peer[0], now):
            alloc.counters.packets_to_client += 1
            alloc.counters.bytes_to_client += len(data)
            txid = _transaction_id()
            attrs = [
                (C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)),
                (C.DATA_ATTR, data),
            ]
            return [ToClient(ft, encode_message(C.DATA, C.INDICATION, txid, attrs))]
        self.counters["drop.peer_no_permission"] += 1
        return []

    # -- time ----------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has work to do, or None."""
        timers = self._timers
        while timers and self._due(*timers[0]) is None:
            heapq.heappop(timers)
            self._stale_timers -= 1
        return timers[0][0] if timers else None

    def _due(self, deadline: float, allocation_id: int) -> Allocation | None:
        """The allocation a heap entry stands for, or None if the entry is stale."""
        alloc = self._by_id.get(allocation_id)
        return alloc if alloc is not None and alloc.scheduled == deadline else None

    def handle_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            alloc = self._due(*heapq.heappop(timers))
            if alloc is None:
                self._stale_timers -= 1
                continue
            alloc.scheduled = float("inf")
            if alloc.expires <= now:
                self._remove(alloc, "expired", out)
                continue
            for host, expires in list(alloc.permissions.items()):
                if expires <= now:
                    del alloc.permissions[host]
            for number, channel in list(alloc.channels.items()):
                if channel.expires <= now:
                    del alloc.channels[number]
                    del alloc.channels_by_peer[channel.peer]
                    out.append(ChannelRemoved(channel))
            self._schedule(alloc)
        return out

    def _schedule(self, alloc: Allocation) -> None:
        deadline = alloc.next_deadline()
        if deadline < alloc.scheduled:
            if alloc.scheduled != float("inf"):
                self._stale(1)  # the later entry stays in the heap until it surfaces
            alloc.scheduled = deadline
            heapq.heappush(self._timers, (deadline, alloc.id))

    def _stale(self, count: int) -> None:
        """``count`` heap entries stopped meaning anything; rebuild the heap once they are half of
        it, so churn cannot grow it beyond twice the live allocations (amortised O(1))."""
        self._stale_timers += count
        if self._stale_timers > 64 and self._stale_timers * 2 > len(self._timers):
            self._timers = [e for e in self._timers if self._due(*e) is not None]
            heapq.heapify(self._timers)
            self._stale_timers = 0

    # -- requests ------------------------------------------------------------------------------
    def _request(self, msg: Message, ft: FiveTuple, now: float, wall: float) -> list[Output]:
        if msg.method == C.BINDING:
            if msg.unknown_required:
                return [self._error(msg, ft, 420, None, _unknown(msg))]
            return [self._binding(msg, ft)]
        if msg.method not in _TURN_METHODS:
            return [self._error(msg, ft, 400, None, reason="Unsupported method")]
        out: list[Output] = []
        auth_or_reply = self._authenticate(msg, ft, now, wall, out)
        if auth_or_reply is None:
            return out
        if isinstance(auth_or_reply, ToClient):
            out.append(auth_or_reply)  # after the AuthRefused: logged before it is answered
            return out
        auth = auth_or_reply
        if msg.unknown_required:
            return [self._error(msg, ft, 420, auth, _unknown(msg))]
        try:
            if msg.method == C.ALLOCATE:
                self._allocate(msg, ft, auth, now, out)
                return out
            if msg.method == C.CONNECTION_BIND:
                self._connection_bind(msg, ft, auth, out)
                return out
            alloc = self._allocations.get(ft)
            if alloc is None:
                raise _Reply(437)
            if alloc.username != auth.username:
                raise _Reply(441)
            if msg.method == C.REFRESH:
                self._refresh(msg, alloc, auth, now, out)
            elif msg.method == C.CREATE_PERMISSION:
                self._create_permission(msg, alloc, auth, now, out)
            elif msg.method == C.CONNECT:
                self._connect(msg, alloc, auth, now, out)
            else:
                self._channel_bind(msg, alloc, auth, now, out)
        except _Reply as r:
            out.append(self._error(msg, ft, r.code, auth, r.extra, r.reason))
        except StunError as exc:  # a malformed attribute value in an authenticated request
            out.append(self._error(msg, ft, 400, auth, reason=str(exc)[:100]))
        return out

    def _binding(self, msg: Message, ft: FiveTuple) -> ToClient:
        """Binding success, with RFC 5780 OTHER-ADDRESS/RESPONSE-ORIGIN/CHANGE-REQUEST when set."""
        attrs = [(C.XOR_MAPPED_ADDRESS, A.encode_xor_address(ft.client, msg.transaction_id))]
        change = msg.get(C.CHANGE_REQUEST)
        pair = self.config.change_addresses
        if pair is None:
            if change is not None:  # RFC 5780 6.1: a server without it answers 420
                return self._error(msg, ft, 420, None, _unknown_attrs([C.CHANGE_REQUEST]))
            return self._reply(msg, ft, C.SUCCESS, attrs, None)
        (ip_a, port_a), (ip_b, port_b) = pair
        here_ip, here_port = ft.server
        other = (ip_b if here_ip == ip_a else ip_a, port_b if here_port == port_a else port_a)
        source = ft
        if change is not None:
            if ft.transport != "udp":
                return self._error(msg, ft, 400, None, reason="CHANGE-REQUEST needs UDP")
            try:
                flags = A.decode_u32(change, "CHANGE-REQUEST")
            except StunError as exc:
                return self._error(msg, ft, 400, None, reason=str(exc)[:100])
            source = FiveTuple(
                ft.transport,
                ft.client,
                (other[0] if flags & 0x4 else here_ip, other[1] if flags & 0x2 else here_port),
            )
        attrs.append((C.OTHER_ADDRESS, A.encode_address(other)))
        attrs.append((C.RESPONSE_ORIGIN, A.encode_address(source.server)))
        return self._reply(msg, source, C.SUCCESS, attrs, None)

    def _authenticate(
        self, msg: Message, ft: FiveTuple, now: float, wall: float, out: list[Output]
    ) -> _Auth | ToClient | None:
        """The credential that signed ``msg``; else the answer to send, or None to drop it (its
        source is over its rate of failed authentications or of challenges). A refusal adds
        its :class:`AuthRefused` to ``out``."""
        if msg.integrity_offset < 0 and msg.integrity_sha256_offset < 0:
            # Only UDP sources can be forged, making the 401 (larger than the request) a
            # reflection at a victim; a stream client can only flood itself.
            if ft.transport == "udp" and not self._challenges.allow(ft.client[0], now):
                self.counters["drop.challenge_rate"] += 1
                return None
            return self._challenge(msg, ft, 401, wall)
        realm_v, nonce_v = msg.get(C.REALM), msg.get(C.NONCE)
        user_v, userhash = msg.get(C.USERNAME), msg.get(C.USERHASH)
        if realm_v is None or nonce_v is None or (user_v is None and userhash is None):
            return self._error(msg, ft, 400, None, reason="Missing USERNAME, REALM or NONCE")
        try:
            nonce = A.decode_text(nonce_v, A.MAX_NONCE, "NONCE")
            if user_v is not None:
                username = A.decode_text(user_v, A.MAX_USERNAME, "USERNAME")
            else:
                found = self.credentials.username_for_hash(userhash or b"")
                if found is None:
                    return self._challenge(msg, ft, 401, wall)
                username = found
        except StunError:
            return self._error(msg, ft, 400, None, reason="Malformed USERNAME or NONCE")
        if not self.nonces.check(nonce, ft.client, wall):
            self.counters["auth.stale_nonce"] += 1
            return self._challenge(msg, ft, 438, wall)
        algorithm = C.ALGORITHM_MD5
        pa, pas = msg.get(C.PASSWORD_ALGORITHM), msg.get(C.PASSWORD_ALGORITHMS)
        if pa is not None or pas is not None:
            # RFC 8489 9.2.4: both or neither, and the list must be the one we offered.
            if pa is None or pas != _OFFERED_ALGORITHMS:
                return self._error(msg, ft, 400, None, reason="Password algorithm mismatch")
            try:
                chosen = A.decode_password_algorithms(pa)
            except StunError:
                chosen = []
            if len(chosen) != 1 or chosen[0][0] not in (C.ALGORITHM_MD5, C.ALGORITHM_SHA256):
                return self._error(msg, ft, 400, None, reason="Unsupported password algorithm")
            algorithm = chosen[0][0]
        if realm_v != self._realm_bytes:
            why = "wrong realm"
            return self._refuse(msg, ft, now, wall, username, "auth.wrong_realm", why, out)
        lookup = self.credentials.lookup(username, algorithm, wall)
        for key in lookup.keys:
            if verify_integrity(msg, key):
                return _Auth(
                    username, lookup.account, key, algorithm, msg.integrity_sha256_offset >= 0
                )
        if lookup.keys:
            reason, why = "auth.bad_integrity", "wrong credential"
        elif "expired" in lookup.refusal:
            reason, why = "auth.expired", lookup.refusal
        elif "lifetime" in lookup.refusal:
            reason, why = "auth.lifetime_too_long", lookup.refusal
        else:
            reason, why = "auth.unknown_user", lookup.refusal or "unknown user"
        return self._refuse(msg, ft, now, wall, username, reason, why, out)

    def _refuse(
        self,
        msg: Message,
        ft: FiveTuple,
        now: float,
        wall: float,
        username: str,
        reason: str,
        why: str,
        out: list[Output],
    ) -> ToClient | None:
        """A failed authentication: counted, reported as :class:`AuthRefused`, answered 401
        until the source exceeds its rate, then dropped."""
        self.counters[reason] += 1
        source = ft.client[0]
        out.append(AuthRefused(ft, username, why))
        if not self._failures.allow(source, now):
            self.counters["drop.auth_failure_rate"] += 1
            return None
        return self._challenge(msg, ft, 401, wall)

    def _challenge(self, msg: Message, ft: FiveTuple, code: int, wall: float) -> ToClient:
        attrs = self._challenge_attributes(code, self.nonces.issue(ft.client, wall).encode())
        self.counters[f"error.{code}"] += 1
        return self._reply(msg, ft, C.ERROR, attrs, None)

    def _challenge_attributes(self, code: int, nonce: bytes) -> list[tuple[int, bytes]]:
        return [
            (C.ERROR_CODE, A.encode_error_code(code)),
            (C.REALM, self.config.realm.encode()),
            (C.NONCE, nonce),
            (C.PASSWORD_ALGORITHMS, _OFFERED_ALGORITHMS),
            (C.SOFTWARE, self.config.software.encode()),
        ]

    def native_challenge(self) -> NativeChallenge:
        """What an I/O adapter needs to answer an unauthenticated UDP request's 401 itself, as
        :meth:`_authenticate` would (see :class:`NativeChallenge`)."""
        attrs = self._challenge_attributes(401, b"")
        at = [t for t, _ in attrs].index(C.NONCE)
        return NativeChallenge(
            methods=frozenset(_TURN_METHODS),
            head=encode_attributes(attrs[:at]),
            tail=encode_attributes(attrs[at + 1 :]),
            nonce_prefix=self.nonces.prefix.encode(),
            nonce_key=self.nonces.key,
            per_second=self.config.max_challenges,
        )

    def count_challenges(
        self, requests: list[tuple[int, int]], answered: int, dropped: int
    ) -> None:
        """Count requests challenged outside the core (``(method, requests)``, of which
        ``answered`` got their 401 and ``dropped`` were over the rate) as if it had seen them."""
        counters = self.counters
        for method, n in requests:
            counters[_REQUEST_COUNTER.get(method, "request.unknown")] += n
        if answered:
            counters["error.401"] += answered
        if dropped:
            counters["drop.challenge_rate"] += dropped

    def _error(
        self,
        msg: Message,
        ft: FiveTuple,
        code: int,
        auth: _Auth | None,
        extra: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...] = (),
        reason: str | None = None,
    ) -> ToClient:
        self.counters[f"error.{code}"] += 1
        attrs = [(C.ERROR_CODE, A.encode_error_code(code, reason)), *extra]
        return self._reply(msg, ft, C.ERROR, attrs, auth)

    def _reply(
        self,
        msg: Message,
        ft: FiveTuple,
        cls: int,
        attrs: list[tuple[int, bytes]],
        auth: _Auth | None,
    ) -> ToClient:
        key = auth.key if auth is not None else None
        sha = auth is not None and auth.sha256_mac
        data = encode_message(
            msg.method,
            cls,
            msg.transaction_id,
            attrs,
            integrity_key=None if sha else key,
            integrity_sha256_key=key if sha else None,
            fingerprint=msg.fingerprint_offset >= 0,
        )
        return ToClient(ft, data)

    def _lifetime(self, msg: Message) -> int:
        """RFC 8656 7.2: max(default, min(requested, max)); zero stays zero."""
        value = msg.get(C.LIFETIME)
        if value is None:
            return self.config.default_lifetime
        requested = A.decode_u32(value, "LIFETIME")
        if requested == 0:
            return 0
        return max(self.config.default_lifetime, min(requested, self.config.max_lifetime))

    def _allocate(
        self, msg: Message, ft: FiveTuple, auth: _Auth, now: float, out: list[Output]
    ) -> None:
        existing = self._allocations.get(ft)
        if existing is not None:
            if existing.transaction_id == msg.transaction_id:  # a retransmission over UDP
                out.append(ToClient(ft, existing.allocate_response))
                return
            raise _Reply(437)
        if self.drain is not None:
            self._redirect(self.drain, ft)
        transport = msg.get(C.REQUESTED_TRANSPORT)
        if transport is None:
            raise _Reply(400, "REQUESTED-TRANSPORT missing")
        tcp = A.decode_one_byte(transport, "REQUESTED-TRANSPORT") == C.TRANSPORT_TCP
        if not tcp and A.decode_one_byte(transport, "REQUESTED-TRANSPORT") != C.TRANSPORT_UDP:
            raise _Reply(442)
        token = msg.get(C.RESERVATION_TOKEN)
        even = msg.get(C.EVEN_PORT)
        requested_family = msg.get(C.REQUESTED_ADDRESS_FAMILY)
        additional_family = msg.get(C.ADDITIONAL_ADDRESS_FAMILY)
        if tcp:
            self._check_tcp_allocate(msg, ft)
        if token is not None and (
            even is not None or requested_family is not None or additional_family is not None
        ):
            raise _Reply(400, "RESERVATION-TOKEN with EVEN-PORT or an address family")
        if requested_family is not None and additional_family is not None:
            raise _Reply(400, "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together")
        supported = self.relays.families()
        families = [C.FAMILY_IPV4]
        if requested_family is not None:
            fam = A.decode_one_byte(requested_family, "REQUESTED-ADDRESS-FAMILY")
            if fam not in (C.FAMILY_IPV4, C.FAMILY_IPV6) or fam not in supported:
                raise _Reply(440)
            families = [fam]
        elif additional_family is not None:
            if A.decode_one_byte(additional_family, "ADDITIONAL-ADDRESS-FAMILY") != C.FAMILY_IPV6:
                raise _Reply(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
            families = [C.FAMILY_IPV4, C.FAMILY_IPV6]
        if token is None and families[0] not in supported:
            raise _Reply(440)
        limit = self.config.max_allocations_per_user
        if limit and self.quota.count(auth.account) >= limit:
            raise _Reply(486)
        if self.quota.total() >= self.config.max_allocations:
            raise _Reply(508)
        if self.admit is not None:
            refusal = self.admit(auth.account, auth.username)
            if refusal is not None:
                self.counters["quota.bytes"] += 1
                raise _Reply(486, refusal)
        lifetime = self._lifetime(msg) or self.config.default_lifetime
        relays: dict[int, Relay] = {}
        new_token: bytes | None = None
        try:
            if token is not None:
                relay = self.relays.allocate_reserved(token)
            elif tcp:
                relay = self.relays.allocate(families[0], tcp=True)[0]
            else:
                reserve_next = A.decode_even_port(even) if even is not None else False
                relay, new_token = self.relays.allocate(
                    families[0], even=even is not None, reserve_next=reserve_next
                )
        except RelayUnavailable as exc:
            raise _Reply(exc.code, str(exc)) from None
        relays[relay.family] = relay
        attrs: list[tuple[int, bytes]] = []
        if len(families) == 2:
            try:
                if C.FAMILY_IPV6 not in supported:
                    raise RelayUnavailable(440, "IPv6 relaying not configured")
                relays[C.FAMILY_IPV6] = self.relays.allocate(C.FAMILY_IPV6)[0]
            except RelayUnavailable as exc:
                attrs.append(
                    (C.ADDRESS_ERROR_CODE, A.encode_address_error_code(C.FAMILY_IPV6, exc.code))
                )
        txid = msg.transaction_id
        for r in relays.values():
            attrs.append((C.XOR_RELAYED_ADDRESS, A.encode_xor_address(r.relayed_address, txid)))
        attrs.append((C.LIFETIME, A.encode_u32(lifetime)))
        if new_token is not None:
            attrs.append((C.RESERVATION_TOKEN, new_token))
        attrs.append((C.XOR_MAPPED_ADDRESS, A.encode_xor_address(ft.client, txid)))
        attrs.append((C.SOFTWARE, self.config.software.encode()))
        reply = self._reply(msg, ft, C.SUCCESS, attrs, auth)
        alloc = Allocation(
            id=next(self._ids),
            five_tuple=ft,
            username=auth.username,
            account=auth.account,
            key=auth.key,
            algorithm=auth.algorithm,
            relays=relays,
            expires=now + lifetime,
            created=now,
            transaction_id=txid,
            allocate_response=reply.data,
            dont_fragment=msg.has(C.DONT_FRAGMENT),
            tcp=tcp,
        )
        self._allocations[ft] = alloc
        self._by_id[alloc.id] = alloc
        for r in relays.values():
            self._by_relay[r.id] = alloc
        self.quota.added(auth.account)
        self._schedule(alloc)
        out.append(reply)
        out.append(AllocationCreated(alloc))

    def _redirect(self, drain: AlternateLookup, ft: FiveTuple) -> NoReturn:
        """Draining: 300 naming the alternate for this client's family and transport, or 508."""
        alternate = drain.alternate_for(ft)
        if alternate is None:
            self.counters["drain.refused"] += 1
            raise _Reply(NO_ALTERNATE, NO_ALTERNATE_REASON)
        self.counters["drain.redirected"] += 1
        raise _Reply(300, extra=tuple(redirect_attributes(alternate, ft)))

    def _refresh(
        self, msg: Message, alloc: Allocation, auth: _Auth, now: float, out: list[Output]
    ) -> None:
        family_v = msg.get(C.REQUESTED_ADDRESS_FAMILY)
        family = None
        if family_v is not None:
            family = A.decode_one_byte(family_v, "REQUESTED-ADDRESS-FAMILY")
            if family not in alloc.relays:
                raise _Reply(443)
        lifetime = self._lifetime(msg)
        if lifetime == 0:
            if family is not None and len(alloc.relays) > 1:
                self._remove_family(alloc, family, out)
            else:
                self._remove(alloc, "refreshed with lifetime 0", out)
        else:
            alloc.expires = now + lifetime
            self._schedule(alloc)
        out.insert(0, self._reply(msg, alloc.five_tuple, C.SUCCESS, _lifetime_attr(lifetime), auth))

    def _peer_address(
        self, value: bytes, msg: Message, alloc: Allocation, out: list[Output]
    ) -> Address:
        peer = A.decode_xor_address(value, msg.transaction_id)
        if family_of(peer[0]) not in alloc.relays:
            raise _Reply(443)
        decision = self.policy.check(peer[0], peer[1])
        if decision.allowed and any(r.relayed_address == peer for r in alloc.relays.values()):
            decision = _OWN_RELAY
        if not decision.allowed:
            out.append(PeerRefused(alloc.five_tuple, alloc.username, peer[0], decision.reason))
            self.counters["peer.refused"] += 1
            self.counters[f"peer.refused.{decision.reason.split(' (')[0]}"] += 1
            raise _Reply(403, "Forbidden peer address")
        return peer

    def _create_permission(
        self, msg: Message, alloc: Allocation, auth: _Auth, now: float, out: list[Output]
    ) -> None:
        values = msg.get_all(C.XOR_PEER_ADDRESS)
        if not values:
            raise _Reply(400, "XOR-PEER-ADDRESS missing")
        refused: list[Output] = []
        try:
            hosts = {self._peer_address(v, msg, alloc, refused)[0] for v in values}
        finally:
            out.extend(refused)
        new = [h for h in hosts if h not in alloc.permissions]
        if len(alloc.permissions) + len(new) > self.config.max_permissions_per_allocation:
            raise _Reply(508, "Too many permissions")
        expires = now + self.config.permission_lifetime
        for host in hosts:
            alloc.permissions[host] = max(alloc.permissions.get(host, 0.0), expires)
        self._schedule(alloc)
        out.insert(0, self._reply(msg, alloc.five_tuple, C.SUCCESS, [], auth))

    def _channel_bind(
        self, msg: Message, alloc: Allocation, auth: _Auth, now: float, out: list[Output]
    ) -> None:
        if alloc.tcp:
            raise _Reply(400, "No channels on a TCP allocation")
        number_v, peer_v = msg.get(C.CHANNEL_NUMBER), msg.get(C.XOR_PEER_ADDRESS)
        if number_v is None or peer_v is None:
            raise _Reply(400, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing")
        number = A.decode_channel_number(number_v)
        if not C.CHANNEL_MIN <= number <= C.CHANNEL_MAX:
            raise _Reply(400, "Channel number out of range")
        refused: list[Output] = []
        try:
            peer = self._peer_address(peer_v, msg, alloc, refused)
        finally:
            out.extend(refused)
        channel = alloc.channels.get(number)
        if channel is not None and channel.peer != peer:
            raise _Reply(400, "Channel already bound to another peer")
        by_peer = alloc.channels_by_peer.get(peer)
        if by_peer is not None and by_peer.number != number:
            raise _Reply(400, "Peer already bound to another channel")
        host = peer[0]
        if (
            host not in alloc.permissions
            and len(alloc.permissions) >= self.config.max_permissions_per_allocation
        ):
            raise _Reply(508, "Too many permissions")
        expires = now + self.config.channel_lifetime
        if channel is None:
            channel = Channel(number, peer, expires, alloc)
            alloc.channels[number] = channel
            alloc.channels_by_peer[peer] = channel
            out.append(ChannelInstalled(channel))
        else:
            channel.expires = expires
        # The permission lives at least as long as the channel (clients such as aioice rely on it).
        alloc.permissions[host] = max(alloc.permissions.get(host, 0.0), expires)
        self._schedule(alloc)
        out.insert(0, self._reply(msg, alloc.five_tuple, C.SUCCESS, [], auth))

    # -- data from clients ---------------------------------------------------------------------
    def _send_indication(self, msg: Message, ft: FiveTuple, now: float) -> list[Output]:
        alloc = self._allocations.get(ft)
        peer_v, data = msg.get(C.XOR_PEER_ADDRESS), msg.get(C.DATA_ATTR)
        if alloc is None or peer_v is None or data is None or msg.unknown_required:
            self.counters["drop.send_indication"] += 1
            return []
        try:
            peer = A.decode_xor_address(peer_v, msg.transaction_id)
        except StunError:
            self.counters["drop.send_indication"] += 1
            return []
        if alloc.tcp:  # RFC 6062: a TCP allocation's data goes over its data connections
            self.counters["drop.send_indication_tcp"] += 1
            return []
        relay = alloc.relays.get(family_of(peer[0]))
        if relay is None or not alloc.has_permission(peer[0], now):
            self.counters["drop.no_permission"] += 1
            return []
        alloc.counters.packets_to_peer += 1
        alloc.counters.bytes_to_peer += len(data)
        return [ToPeer(relay, peer, data, msg.has(C.DONT_FRAGMENT) or alloc.dont_fragment)]

    def _channel_data_from_client(self, data: bytes, ft: FiveTuple, now: float) -> list[Output]:
        number, length = _CHANNEL_HEADER.unpack_from(data, 0)
        alloc = self._allocations.get(ft)
        channel = alloc.channels.get(number) if alloc is not None else None
        if alloc is None or channel is None or channel.expires <= now or 4 + length > len(data):
            self.counters["drop.channel_data"] += 1
            return []
        relay = alloc.relays.get(family_of(channel.peer[0]))
        if relay is None:  # its family ended (the channel went with it; this is a late packet)
            self.counters["drop.channel_data"] += 1
            return []
        payload = data[4 : 4 + length]
        alloc.counters.packets_to_peer += 1
        alloc.counters.bytes_to_peer += length
        return [ToPeer(relay, channel.peer, payload, alloc.dont_fragment)]

    # -- teardown ------------------------------------------------------------------------------
    def _remove_family(self, alloc: Allocation, family: int, out: list[Output]) -> None:
        """One family of a dual allocation ends: its channels and permissions go with its relay."""
        for number, channel in list(alloc.channels.items()):
            if family_of(channel.peer[0]) == family:
                del alloc.channels[number]
                del alloc.channels_by_peer[channel.peer]
                out.append(ChannelRemoved(channel))
        for host in [h for h in alloc.permissions if family_of(h) == family]:
            del alloc.permissions[host]
        relay = alloc.relays.pop(family)
        self._by_relay.pop(relay.id, None)
        self.relays.release(relay)

    def _remove(self, alloc: Allocation, reason: str, out: list[Output]) -> None:
        alloc.alive = False
        self._allocations.pop(alloc.five_tuple, None)
        self._by_id.pop(alloc.id, None)
        if alloc.scheduled != float("inf"):
            self._stale(1)
        self.quota.removed(alloc.account)
        for relay in alloc.relays.values():
            self._by_relay.pop(relay.id, None)
            self.relays.release(relay)
        for channel in alloc.channels.values():
            out.append(ChannelRemoved(channel))
        if alloc.tcp:
            self.tcp.drop_allocation(alloc.id)  # the adapter closes them with the allocation
        out.append(AllocationRemoved(alloc, reason))

    # -- RFC 6062 TCP relaying -----------------------------------------------------------------
    def _check_tcp_allocate(self, msg: Message, ft: FiveTuple) -> None:
        """RFC 6062 5.1: TCP relays for TCP/TLS clients, one family, no UDP-only attributes."""
        if self.config.tcp_refusal is not None:
            raise _Reply(442, self.config.tcp_refusal)
        if not ft.is_stream:
            raise _Reply(400, "TCP relaying needs a TCP or TLS connection")
        if msg.has(C.DONT_FRAGMENT) or msg.has(C.EVEN_PORT) or msg.has(C.RESERVATION_TOKEN):
            raise _Reply(400, "DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN on TCP")
        if msg.has(C.ADDITIONAL_ADDRESS_FAMILY):
            raise _Reply(400, "ADDITIONAL-ADDRESS-FAMILY on TCP")

    def _connect(
        self, msg: Message, alloc: Allocation, auth: _Auth, now: float, out: list[Output]
    ) -> None:
        """RFC 6062 5.2: after the peer policy and the permission, ask the adapter to connect;
        the answer waits for :meth:`connect_result`."""
        if not alloc.tcp:
            raise _Reply(400, "Connect needs a TCP allocation")
        peer_v = msg.get(C.XOR_PEER_ADDRESS)
        if peer_v is None:
            raise _Reply(400, "XOR-PEER-ADDRESS missing")
        refused: list[Output] = []
        try:
            peer = self._peer_address(peer_v, msg, alloc, refused)
        finally:
            out.extend(refused)
        if not alloc.has_permission(peer[0], now):
            self.counters["tcp.refused_no_permission"] += 1
            raise _Reply(403, "No permission for that peer")
        relay = alloc.relays[family_of(peer[0])]
        try:
            conn = self.tcp.open(alloc, relay, peer, CONNECTING, (msg, auth))
        except ConnectionRefused as exc:
            self.counters["tcp.refused_cap" if exc.code == 508 else "tcp.refused_duplicate"] += 1
            raise _Reply(exc.code, str(exc)) from None
        out.append(PeerConnect(conn))

    def connect_result(self, connection_id: int, ok: bool, now: float) -> list[Output]:
        """The adapter's outcome of a :class:`PeerConnect`: the Connect's answer (CONNECTION-ID,
        or 447 and the entry forgotten)."""
        conn = self.tcp.get(connection_id)
        if conn is None or conn.state != CONNECTING or conn.request is None:
            return []  # the allocation ended meanwhile
        msg, auth = conn.request
        assert isinstance(auth, _Auth)
        conn.request = None
        ft = conn.allocation.five_tuple
        if not ok:
            self.tcp.remove(connection_id)
            self.counters["tcp.connect_failed"] += 1
            return [self._error(msg, ft, 447, auth)]
        conn.state = PENDING
        self.counters["tcp.connected"] += 1
        attrs = [(C.CONNECTION_ID, A.encode_u32(connection_id))]
        return [self._reply(msg, ft, C.SUCCESS, attrs, auth)]

    def accept_peer(
        self, relay_id: int, peer: Address, now: float
    ) -> tuple[int | None, list[Output]]:
        """RFC 6062 5.3: a peer connected to a TCP relayed address. Its CONNECTION-ID and the
        ConnectionAttempt for the client, or None (no permission, over the cap): close it."""
        alloc = self._by_relay.get(relay_id)
        if alloc is None or not alloc.tcp:
            return None, []
        if not alloc.has_permission(peer[0], now):
            self.counters["tcp.refused_no_permission"] += 1
            return None, []
        try:
            conn = self.tcp.open(alloc, alloc.relays[family_of(peer[0])], peer, PENDING)
        except (ConnectionRefused, KeyError) as exc:
            code = exc.code if isinstance(exc, ConnectionRefused) else 0
            self.counters["tcp.refused_cap" if code == 508 else "tcp.refused_duplicate"] += 1
            return None, []
        self.counters["tcp.attempts"] += 1
        txid = _transaction_id()
        attrs = [
            (C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)),
            (C.CONNECTION_ID, A.encode_u32(conn.id)),
        ]
        data = encode_message(C.CONNECTION_ATTEMPT, C.INDICATION, txid, attrs)
        return conn.id, [ToClient(alloc.five_tuple, data)]

    def _connection_bind(self, msg: Message, ft: FiveTuple, auth: _Auth, out: list[Output]) -> None:
        """RFC 6062 5.4: a new client connection takes over a pending peer connection."""
        if not ft.is_stream:
            raise _Reply(400, "ConnectionBind needs a TCP or TLS connection")
        if ft in self._allocations:
            raise _Reply(400, "ConnectionBind on a control connection")
        value = msg.get(C.CONNECTION_ID)
        conn = None
        if value is not None and len(value) == 4:
            conn = self.tcp.get(A.decode_u32(value, "CONNECTION-ID"))
        if conn is None or conn.state != PENDING:
            self.counters["tcp.bind_unknown"] += 1
            raise _Reply(400, "Unknown CONNECTION-ID")
        if conn.allocation.username != auth.username:
            raise _Reply(441)
        conn.state = BOUND
        self.counters["tcp.bound"] += 1
        out.append(self._reply(msg, ft, C.SUCCESS, [], auth))
        out.append(DataConnectionBound(conn, ft))

    def tcp_closed(self, connection_id: int, now: float) -> list[Output]:
        """The adapter closed a peer connection (either side ended, or no ConnectionBind came
        in time): its CONNECTION-ID and its peer are free again."""
        self.tcp.remove(connection_id)
        return []


def claimed_reservation(data: bytes) -> bytes | None:
    """The RESERVATION-TOKEN an Allocate request in ``data`` claims (8 bytes), else None: with
    several workers, the one that receives it may have to fetch the reserved port first."""
    if data[:2] != _ALLOCATE_REQUEST:
        return None
    try:
        token = parse_message(data).get(C.RESERVATION_TOKEN)
    except StunError:
        return None
    return token if token is not None and len(token) == 8 else None


def encode_channel_data(number: int, payload: bytes, padded: bool) -> bytes:
    """ChannelData framing; over streams the message is padded to a multiple of 4 bytes."""
    header = _CHANNEL_HEADER.pack(number, len(payload))
    if padded and len(payload) & 3:
        return header + payload + b"\x00" * (-len(payload) & 3)
    return header + payload


def _lifetime_attr(lifetime: int) -> list[tuple[int, bytes]]:
    return [(C.LIFETIME, A.encode_u32(lifetime))]


def _unknown(msg: Message) -> list[tuple[int, bytes]]:
    return _unknown_attrs(msg.unknown_required)


def _unknown_attrs(types: list[int] | tuple[int, ...]) -> list[tuple[int, bytes]]:
    return [(C.UNKNOWN_ATTRIBUTES, A.encode_unknown_attributes(types))]


def _transaction_id() -> bytes:
    return os.urandom(12)
