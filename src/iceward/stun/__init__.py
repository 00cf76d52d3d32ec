"""Sans-IO STUN codec (RFC 8489) with the TURN (RFC 8656), TURN-TCP (RFC 6062) and RFC 5780 values.

``parse_message`` / ``encode_message`` frame messages; :mod:`.attributes` types attribute values;
:mod:`.integrity` derives keys and checks MESSAGE-INTEGRITY(-SHA256). No sockets, no clocks.
"""

from iceward.stun.message import (
    Message,
    StunError,
    StunParseError,
    encode_message,
    looks_like_stun,
    parse_message,
)

__all__ = [
    "Message",
    "StunError",
    "StunParseError",
    "encode_message",
    "looks_like_stun",
    "parse_message",
]
