"""The free relay ports of one address family: every port of the range can be handed out.

A bounded random walk over the range (the first design) stops finding ports long before the range
is full. Here the ports this process does not hold wait in a queue, shuffled once at start (relay
ports stay unpredictable, RFC 8656 §6) and returned to the back when released (a port is reused
as late as possible, so a peer's late datagrams for the old allocation do not reach a new one).
A port the kernel refuses (another process holds it) goes to the back too, and every free port is
tried before the pool says none is left, so the range fills to 100%.

EVEN-PORT asks for a particular shape of port (even, and with R the odd one after it free too).
Those come from a scan of the held set instead of the queue; what the queue still holds of them
is skipped when it comes up (the queue may hold stale or repeated entries, never a lost port).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class PortPool:
    """The ports of ``[low, high]`` not held by this process, in the order to try them."""

    __slots__ = ("_free", "_held", "high", "low")

    def __init__(self, low: int, high: int, rng: random.Random | None = None) -> None:
        self.low, self.high = low, high
        ports = list(range(low, high + 1))
        (rng or random.SystemRandom()).shuffle(ports)
        self._free: deque[int] = deque(ports)
        self._held: set[int] = set()

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    @property
    def held(self) -> int:
        return len(self._held)

    def take(self, bind: Callable[[int], T | None]) -> T | None:
        """What ``bind`` makes of the first free port it can have (the port is then held); None
        when every free port was tried. A refused port goes to the back of the queue, and so
        does the port ``bind`` raises on (the exception goes on: it is not the port's fault)."""
        for _ in range(len(self._free)):
            port = self._free.popleft()
            if port in self._held:
                continue  # taken by a scan meanwhile; its release puts it back
            try:
                bound = bind(port)
            except BaseException:
                self._free.append(port)
                raise
            if bound is not None:
                self._held.add(port)
                return bound
            self._free.append(port)
        return None

    def candidates(self, start: int | None = None) -> Iterator[int]:
        """Every port not held, once, from a random start: for the shapes the queue cannot
        serve (EVEN-PORT). The caller marks what it takes with :meth:`hold`."""
        span = self.size
        first = random.randrange(span) if start is None else start
        for i in range(span):
            port = self.low + (first + i) % span
            if port not in self._held:
                yield port

    def is_held(self, port: int) -> bool:
        return port in self._held

    def hold(self, port: int) -> None:
        self._held.add(port)

    def release(self, port: int) -> None:
        if port in self._held:
            self._held.discard(port)
            self._free.append(port)
