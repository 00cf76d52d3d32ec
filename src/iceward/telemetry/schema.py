"""The shape of a call record (``POST /api/v1/telemetry``), strict and bounded in every field.

What :mod:`iceward.analyze.telemetry` reads, and nothing else: an unknown field is refused, not
ignored. No field may carry a credential (:func:`credential_field`), and no address is kept but
a relay candidate's (the TURN server's side): an ICE candidate error says only its family.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iceward.analyze.model import STATE_KINDS

#: Offsets from the record's start in ms: a call may last a week, no more.
Ms = Annotated[float, Field(ge=0, le=7 * 86_400_000, allow_inf_nan=False)]
Url = Annotated[str, Field(min_length=1, max_length=300)]
#: Tags and call ids: any text but control characters.
Short = Annotated[str, Field(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]
Count = Annotated[int, Field(ge=0, le=2**53)]
Kind = Literal["signaling", "iceGathering", "iceConnection", "connection"]
State = Annotated[str, Field(min_length=1, max_length=24, pattern=r"^[a-z-]+$")]
CandidateType = Literal["host", "srflx", "prflx", "relay", "unknown"]
Protocol = Literal["udp", "tcp"]
RelayProtocol = Literal["udp", "tcp", "tls"]

assert set(STATE_KINDS) == set(Kind.__args__)  # type: ignore[attr-defined]

_SECRET_KEYS = ("credential", "password", "username")
_SECRET_IN_URL = re.compile(
    r"(credential|password|username)\s*=|//[^/?#]*@|^(stuns?|turns?):[^?]*@", re.IGNORECASE
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IceServerIn(_Strict):
    urls: list[Url] = Field(max_length=16)


class ConfigIn(_Strict):
    iceServers: list[IceServerIn] = Field(max_length=16)
    iceTransportPolicy: Literal["all", "relay"] | None = None
    bundlePolicy: Literal["balanced", "max-compat", "max-bundle"] | None = None


class EndIn(_Strict):
    """One end of a candidate pair, or a candidate gathered or received."""

    type: CandidateType
    protocol: Protocol | None = None
    relayProtocol: RelayProtocol | None = None
    url: Url | None = None
    #: Only for relay candidates (the TURN server's address), never a user's.
    address: Annotated[str, Field(max_length=64, pattern=r"^[0-9a-fA-F.:]+$")] | None = None
    port: int | None = Field(None, ge=0, le=65535)

    @model_validator(mode="after")
    def _only_relay_addresses(self) -> EndIn:
        if self.address is not None and self.type != "relay":
            raise ValueError("only a relay candidate may carry an address")
        return self


class CandidateIn(EndIn):
    t: Ms | None = None
    side: Literal["local", "remote"]


class ErrorIn(_Strict):
    t: Ms | None = None
    url: Url
    code: int = Field(ge=0, le=999)
    text: str = Field("", max_length=200)
    #: The family of the local interface that tried (IPv6 ones trying IPv4 servers are noise).
    family: Literal["ipv4", "ipv6"] | None = None


class SelectedIn(_Strict):
    t: Ms
    local: EndIn | None = None
    remote: EndIn | None = None
    rtt: float | None = Field(None, ge=0, le=60, allow_inf_nan=False)


class PairIn(_Strict):
    """A candidate pair as last seen in getStats(): what its connectivity checks got."""

    local: EndIn | None = None
    remote: EndIn | None = None
    state: State | None = None  # frozen, waiting, in-progress, failed, succeeded
    requestsSent: Count | None = None
    responsesReceived: Count | None = None
    #: Gone from the last getStats() (Chromium drops failed pairs).
    vanished: bool = False


class SampleIn(_Strict):
    """A getStats() summary: the selected transport's counters and RTT (s)."""

    t: Ms
    bytesSent: Count | None = None
    bytesReceived: Count | None = None
    packetsSent: Count | None = None
    packetsReceived: Count | None = None
    rtt: float | None = Field(None, ge=0, le=60, allow_inf_nan=False)


class RecordIn(_Strict):
    v: Literal[1]
    token: str = Field(min_length=1, max_length=300)
    callId: Short | None = None
    tags: dict[
        Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")], Short
    ] = Field(default={}, max_length=8)
    #: Unix ms when the SDK started watching (the PeerConnection's creation, near enough).
    start: float = Field(ge=1e12, le=1e13, allow_inf_nan=False)
    end: Ms
    reason: Literal["closed", "failed", "pagehide"]
    config: ConfigIn | None = None
    states: list[tuple[Ms, Kind, State]] = Field(default=[], max_length=200)
    candidates: list[CandidateIn] = Field(default=[], max_length=100)
    errors: list[ErrorIn] = Field(default=[], max_length=50)
    selected: list[SelectedIn] = Field(default=[], max_length=20)
    pairs: list[PairIn] = Field(default=[], max_length=20)
    samples: list[SampleIn] = Field(default=[], max_length=30)

    def for_analyzer(self) -> dict[str, Any]:
        """The record as :func:`iceward.analyze.telemetry.parse_record` reads it (no token)."""
        return self.model_dump(mode="json", exclude={"token"}, exclude_none=True)


_SUSPECT = (b"credential", b"password", b"username", b"@", b"\\u")


def may_carry_credentials(body: bytes) -> bool:
    """Whether :func:`credential_field` must look: none of its words, no ``@``, no JSON escape
    that could spell one in the raw body means there is nothing to find."""
    lowered = body.lower()
    return any(word in lowered for word in _SUSPECT)


def credential_field(value: Any, depth: int = 0) -> str | None:
    """Where a credential sits in a parsed record (a key, or a URL carrying one), else None."""
    if depth > 8:
        return "nesting"
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() in _SECRET_KEYS:
                return str(k)
            found = credential_field(v, depth + 1)
            if found is not None:
                return f"{k}.{found}"
    elif isinstance(value, list):
        for i, v in enumerate(value[:1000]):
            found = credential_field(v, depth + 1)
            if found is not None:
                return f"{i}.{found}"
    elif isinstance(value, str) and _SECRET_IN_URL.search(value):
        return "value"
    return None
