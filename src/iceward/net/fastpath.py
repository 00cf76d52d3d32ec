"""The native relay fast path (``_fastpath``, a C extension) seen from the control plane.

The extension owns one epoll set over the UDP listeners and relay sockets; its ``poll`` (the GIL
released) drains them with recvmmsg, serves forwarding-table hits itself (sendmmsg, UDP GSO) and
returns the rest, which goes to the same Python handlers the pure-Python path uses. Its epoll fd
is one reader on the asyncio loop.

Tables and counters: a UDP client's channel is two entries, (listener, client, channel) -> (relay,
peer) and (relay, peer) -> (listener, client, channel), each counting packets and payload bytes
under a token. :meth:`FastPath.sync` adds what they counted since the last call to the allocation's
:class:`TrafficCounters`, so readers of those counters see exact numbers after a sync. A plain TCP
client's channels are the same two entries with its socket (:mod:`iceward.net.nativestream`) in
the listener's place: Python reads the stream and the engine serves the ChannelData frames at its
front; peer datagrams are framed onto the socket here. A TLS client's entries are the same,
except that its frames always come back to Python (a list per poll) for the TLS transport.

STUN Binding: with :meth:`FastPath.answer_binding` on, a Binding request that needs nothing but
the client's address (no attributes, or only SOFTWARE and FINGERPRINT) is answered by the engine
with the bytes the core would send; :meth:`FastPath.take_bindings` says how many, so the core's
request counter stays exact. Anything else (RFC 5780 CHANGE-REQUEST, unknown attributes, a wrong
FINGERPRINT) comes back to Python as before.

401 challenges: with :meth:`FastPath.answer_challenges` on, a well-formed TURN request without
MESSAGE-INTEGRITY(-SHA256) is answered by the engine with the core's 401, byte for byte: the
pieces come from :meth:`TurnServer.native_challenge`, the nonce is :class:`NonceManager`'s
(HMAC-SHA256 in C, the second read from the wall clock per answer), FINGERPRINT when the request
had one; the core's ``max_challenges`` per source IP a second holds, the rest dropped. One that
claims a RESERVATION-TOKEN (workers may hand the reserved port over first) spends that rate and
goes to the core. :meth:`FastPath.take_challenges` says how many of each, for
:meth:`TurnServer.count_challenges`.

``ICEWARD_FASTPATH=0`` (or a missing extension) selects the pure-Python path; ``ICEWARD_FASTPATH=
"1 nogso"`` / ``"1 nogro"`` keep the native path without UDP GSO sends / UDP GRO receives.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from iceward.turn.allocation import Address, TrafficCounters
from iceward.turn.server import NativeChallenge

LISTENER = 1
RELAY = 2

#: fd -> what to do with a datagram the tables did not serve: handler(data, source address).
Handler = Callable[[bytes, Address], None]
#: A stream's: handler(frames, None), what the engine did not write to the stream itself.
StreamHandler = Callable[[list[bytes], None], None]


def load_engine() -> tuple[Any, str]:
    """(engine, why): a new native engine, or None and the reason the Python path is used."""
    words = os.environ.get("ICEWARD_FASTPATH", "1").strip().lower().replace(",", " ").split()
    if words and words[0] in ("0", "off", "no", "false", "python"):
        return None, "python (ICEWARD_FASTPATH=0)"
    # "nogso" / "nogro" after the switch turn the kernel batching off (for measurements).
    options = {"gso": "nogso" not in words, "gro": "nogro" not in words}
    if not sys.platform.startswith("linux"):
        return None, f"python (no native fast path on {sys.platform})"
    try:
        from iceward.net import _fastpath  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"python (native extension not built: {exc})"
    try:
        engine = _fastpath.Engine(**options)
    except OSError as exc:
        return None, f"python (native engine failed: {exc})"
    batching = "".join(f", UDP {name.upper()}" for name, on in options.items() if on)
    return engine, f"native (epoll, recvmmsg/sendmmsg{batching})"


class FastPath:
    """One native engine on one event loop, and the control plane's view of its tables."""

    def __init__(
        self, engine: Any, loop: asyncio.AbstractEventLoop, on_error: Callable[[], None]
    ) -> None:
        """``on_error`` is called inside ``except`` when a handler raises: the datagram is
        dropped, the rest of the batch still served."""
        self.engine = engine
        self._on_error = on_error
        self._loop = loop
        self._handlers: dict[int, Handler | StreamHandler] = {}
        #: token -> (counters, True for the client->peer direction).
        self._tokens: dict[int, tuple[TrafficCounters, bool]] = {}
        #: (listener fd, client, channel) -> (to-peer token, relay fd, peer, to-client token).
        self._installed: dict[tuple[int, Address, int], tuple[int, int, Address, int]] = {}
        #: relay fd -> the keys of ``_installed`` through it.
        self._by_relay: dict[int, set[tuple[int, Address, int]]] = {}
        #: TCP client stream fd -> the keys of ``_installed`` reading it.
        self._by_stream: dict[int, set[tuple[int, Address, int]]] = {}
        #: id(allocation counters) -> the id of its to-peer bucket (to-client: the next one).
        self._buckets: dict[int, int] = {}
        self._next_bucket = 1
        self._next_token = 1
        self.closed = False
        loop.add_reader(engine.fileno(), self._on_ready)

    # -- sockets -------------------------------------------------------------------------------
    def register(self, fd: int, kind: int, handler: Handler) -> None:
        self.engine.add_socket(fd, kind)
        self._handlers[fd] = handler

    def unregister(self, fd: int) -> None:
        """Before the socket closes: the engine forgets it and every entry that uses it. A
        relay's own entries are uninstalled first (their counts taken as they go), so the engine
        has none left to look for in its whole table."""
        for key in list(self._by_relay.pop(fd, ())):
            self.uninstall(*key)
        if self._handlers.pop(fd, None) is not None and not self.closed:
            self.engine.remove_socket(fd)

    def add_stream(self, fd: int, handler: StreamHandler) -> None:
        """A TCP client's socket (the engine's own descriptor for it): channels installed with
        it in the listener's place are served natively; ``handler(frames, None)`` gets a list of
        the frames (the first maybe the rest of one) the socket did not take, for the Python
        transport."""
        self.engine.add_stream(fd)
        self._handlers[fd] = handler
        self._by_stream[fd] = set()

    def hold_stream(self, fd: int, held: bool) -> None:
        """While held, every frame for the stream goes to its handler (the transport has bytes
        waiting: what the engine wrote would overtake them)."""
        if not self.closed:
            self.engine.hold_stream(fd, held)

    def remove_stream(self, fd: int) -> None:
        """Before the descriptor closes: its entries uninstalled (their counts taken)."""
        for key in list(self._by_stream.pop(fd, ())):
            self.uninstall(*key)
        if self._handlers.pop(fd, None) is not None and not self.closed:
            self.engine.remove_socket(fd)

    def _on_ready(self) -> None:
        handlers = self._handlers
        for fd, data, addr in self.engine.poll(0):
            handler = handlers.get(fd)
            if handler is not None:
                try:
                    handler(data, addr)
                except Exception:
                    self._on_error()

    # -- forwarding entries --------------------------------------------------------------------
    def install(
        self,
        listener_fd: int,
        client: Address,
        number: int,
        relay_fd: int,
        peer: Address,
        counters: TrafficCounters,
    ) -> None:
        key = (listener_fd, client, number)
        if key in self._installed:
            self.uninstall(listener_fd, client, number)
        to_peer, to_client = self._next_token, self._next_token + 1
        self._next_token += 2
        self._tokens[to_peer] = (counters, True)
        self._tokens[to_client] = (counters, False)
        self._installed[key] = (to_peer, relay_fd, peer, to_client)
        self._by_relay.setdefault(relay_fd, set()).add(key)
        stream_keys = self._by_stream.get(listener_fd)
        if stream_keys is not None:
            stream_keys.add(key)
        self.engine.install_client(listener_fd, client, number, relay_fd, peer, to_peer)
        self.engine.install_peer(relay_fd, peer, listener_fd, client, number, to_client)
        self._limit(key, counters)

    def _limit(self, key: tuple[int, Address, int], counters: TrafficCounters) -> None:
        """Give an installed channel's two entries the allocation's buckets (shared by all its
        channels), if it has a bandwidth limit; lift them if it had one and has none now."""
        rate = getattr(counters.limiter, "rate", 0)
        bucket = self._buckets.get(id(counters))
        if not rate and bucket is None:
            return
        if bucket is None:
            bucket = self._buckets[id(counters)] = self._next_bucket
            self._next_bucket += 2
        listener_fd, client, number = key
        _, relay_fd, peer, _ = self._installed[key]
        self.engine.limit(LISTENER, listener_fd, client, number, bucket, rate, False)
        self.engine.limit(RELAY, relay_fd, peer, 0, bucket + 1, rate, True)

    def limit(self, counters: TrafficCounters) -> None:
        """The allocation of ``counters`` got a bandwidth limit (or lost it): its installed
        channels too."""
        if self.closed:
            return
        for key, (to_peer, _, _, _) in list(self._installed.items()):
            if self._tokens.get(to_peer, (None, True))[0] is counters:
                self._limit(key, counters)

    def set_capacity(self, rate: float) -> None:
        """The node's (this process's share of its) bytes/s, each direction."""
        self.engine.set_capacity(rate)

    def installed(self, listener_fd: int, client: Address, number: int) -> bool:
        return (listener_fd, client, number) in self._installed

    def uninstall(self, listener_fd: int, client: Address, number: int) -> None:
        key = (listener_fd, client, number)
        found = self._installed.pop(key, None)
        if found is None or self.closed:
            return
        to_peer, relay_fd, peer, to_client = found
        keys = self._by_relay.get(relay_fd)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_relay[relay_fd]
        stream_keys = self._by_stream.get(listener_fd)
        if stream_keys is not None:
            stream_keys.discard(key)
        engine = self.engine
        self._take_drops()
        for token, counts in (
            (to_peer, engine.uninstall_client(listener_fd, client, number)),
            (to_client, engine.uninstall_peer(relay_fd, peer)),
        ):
            if counts is not None:
                self._add(token, counts[0], counts[1])
        # Entries purged with a closed socket left their counts pending: take them now.
        for token, packets, nbytes in engine.collect(True):
            self._add(token, packets, nbytes)
        counters = self._tokens.pop(to_peer, (None, True))[0]
        self._tokens.pop(to_client, None)
        if counters is not None and not any(c is counters for c, _ in self._tokens.values()):
            self._buckets.pop(id(counters), None)

    def sync(self) -> None:
        """Move what the native entries counted into the allocations' counters."""
        if self.closed:
            return
        for token, packets, nbytes in self.engine.collect():
            self._add(token, packets, nbytes)
        self._take_drops()

    def _take_drops(self) -> None:
        """What the native buckets dropped, into the allocations' and the process's counts."""
        for token, dropped in self.engine.collect_limited():
            found = self._tokens.get(token)
            if found is None:
                continue
            counters, to_peer = found
            if to_peer:
                counters.dropped_to_peer += dropped
            else:
                counters.dropped_to_client += dropped
            limiter = counters.limiter
            drops = getattr(limiter, "drops", None)
            if drops is not None:
                drops["drop.bandwidth"] += dropped

    def _add(self, token: int, packets: int, nbytes: int) -> None:
        found = self._tokens.get(token)
        if found is None:
            return
        counters, to_peer = found
        if to_peer:
            counters.packets_to_peer += packets
            counters.bytes_to_peer += nbytes
        else:
            counters.packets_to_client += packets
            counters.bytes_to_client += nbytes

    def answer_binding(self, on: bool) -> None:
        """Let the engine answer plain Binding requests on the listeners."""
        self.engine.answer_binding(on)

    def take_bindings(self) -> int:
        """Binding requests the engine answered since the last call."""
        if self.closed:
            return 0
        count: int = self.engine.take_bindings()
        return count

    def answer_challenges(self, challenge: NativeChallenge | None) -> str | None:
        """Let the engine answer the listeners' unauthenticated TURN requests with the core's
        401 (None: no more). Returns None when it does, else why the core keeps answering."""
        if challenge is None:
            self.engine.answer_challenges(0, b"", b"", b"", b"", 0.0)
            return None
        if any(m >= 16 for m in challenge.methods):
            return "a challenged TURN method is above the engine's 16"
        try:
            self.engine.answer_challenges(
                sum(1 << m for m in challenge.methods),
                challenge.head,
                challenge.tail,
                challenge.nonce_prefix,
                challenge.nonce_key,
                float(challenge.per_second),
            )
        except ValueError as exc:
            size = len(challenge.head) + len(challenge.tail)
            return f"--realm and --software ({size} bytes of attributes) make a 401 {exc}"
        return None

    def take_challenges(self) -> tuple[list[tuple[int, int]], int, int]:
        """([(method, requests)], answered, dropped over the rate) the engine challenged since
        the last call."""
        if self.closed:
            return [], 0, 0
        requests, answered, dropped = self.engine.take_challenges()
        return list(requests), int(answered), int(dropped)

    def source_budget(self, rate: float) -> None:
        """STUN messages per second per source the listeners pass on (0: no budget); the rest
        are dropped before the Binding answer and the hand-off (:mod:`iceward.net.srcbudget`)."""
        self.engine.source_budget(rate)

    def take_source_drops(self) -> tuple[int, list[tuple[str, int]]]:
        """(dropped in all, [(source, dropped)]) over the budget since the last call."""
        if self.closed:
            return 0, []
        total, per_source = self.engine.take_source_drops()
        return int(total), list(per_source)

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.engine.stats()
        return stats

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._loop.remove_reader(self.engine.fileno())
        except (ValueError, OSError):
            pass
        self.sync()
        self.closed = True
        self.engine.close()
        self._handlers.clear()
