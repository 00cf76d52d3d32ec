"""What a draining server answers a new Allocate: where to go instead, or that it takes none.

A server drains before it stops (a deploy, a scale-down): the allocations it has keep relaying,
refreshing and binding, but a new one is sent elsewhere. RFC 8656 section 7.2 lets a server answer
an Allocate with 300 (Try Alternate) and ALTERNATE-SERVER (RFC 8489 section 10, the alternate
server mechanism, and section 14), plus ALTERNATE-DOMAIN for a client on TLS, which must check the
alternate's certificate against that name. The answer is signed like any other answer to an
authenticated request (coturn's uclient checks MESSAGE-INTEGRITY on a 300 before it follows it).
The core asks an :class:`AlternateLookup` (the composition root's, static or from the fleet) and
never learns where the answer came from.

With no alternate known the answer is 508 (Insufficient Capacity), reason "Server draining":
RFC 8656 gives 508 to a server that cannot provide a relay now, and asks the client to wait at
least a minute before asking this server for another allocation (an ICE agent with several TURN
servers uses the others meanwhile), which is what a draining server wants. 403 would tell the
client the request is refused until an operator fixes something, 500 that the server is broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.turn.allocation import Address, FiveTuple

#: The answer of a draining server that knows no alternate, and its reason phrase.
NO_ALTERNATE = 508
NO_ALTERNATE_REASON = "Server draining"


@dataclass(frozen=True, slots=True)
class Alternate:
    """Another server for the clients of this one."""

    #: IP literal and port of the other server's TURN listener (for the client's transport).
    address: Address
    #: Its TLS name, sent as ALTERNATE-DOMAIN to TLS clients; None: not known.
    domain: str | None = None


class AlternateLookup(Protocol):
    """Where a draining server sends the client on ``five_tuple`` (its family, its transport)."""

    def alternate_for(self, five_tuple: FiveTuple) -> Alternate | None: ...


def redirect_attributes(alternate: Alternate, five_tuple: FiveTuple) -> list[tuple[int, bytes]]:
    """ALTERNATE-SERVER, then ALTERNATE-DOMAIN when the client is on TLS and a name is known."""
    attrs = [(C.ALTERNATE_SERVER, A.encode_address(alternate.address))]
    if alternate.domain and five_tuple.transport == "tls":
        attrs.append((C.ALTERNATE_DOMAIN, alternate.domain.encode()))
    return attrs
