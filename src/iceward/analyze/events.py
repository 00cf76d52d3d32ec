"""PeerConnection API events (webrtc-internals ``updateLog``, rtcstats lines) → the model.

One applier serves every era: event names with or without the ``on`` prefix and in either case
(``iceConnectionStateChange``, ``iceconnectionstatechange``, ``oniceconnectionstatechange``),
state values plain, legacy (``ICEConnectionStateChecking``) or JSON-quoted (``"checking"``),
candidate and error payloads as legacy text or JSON (camelCase or snake_case).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from iceward.analyze.model import (
    Candidate,
    CandidateError,
    Config,
    PeerConnectionReport,
    StateChange,
)
from iceward.diagnose.iceurl import read_url, safe_url

_KNOWN = {
    "signalingstatechange": "signaling",
    "icegatheringstatechange": "iceGathering",
    "iceconnectionstatechange": "iceConnection",
    "connectionstatechange": "connection",
}
_ON_NAMES = {
    "signalingstatechange",
    "icegatheringstatechange",
    "iceconnectionstatechange",
    "connectionstatechange",
    "icecandidate",
    "icecandidateerror",
    "negotiationneeded",
    "renegotiationneeded",
    "datachannel",
    "track",
    "addstream",
    "removestream",
}
#: API calls worth a line on the timeline (lower-cased names).
_TIMELINE = {
    "createoffer": "createOffer",
    "createanswer": "createAnswer",
    "setlocaldescription": "setLocalDescription",
    "setremotedescription": "setRemoteDescription",
    "setlocaldescriptiononfailure": "setLocalDescription failed",
    "setremotedescriptiononfailure": "setRemoteDescription failed",
    "createofferonfailure": "createOffer failed",
    "createansweronfailure": "createAnswer failed",
    "addicecandidatefailed": "addIceCandidate failed",
    "addicecandidateonfailure": "addIceCandidate failed",
    "restartice": "restartIce",
    "setconfiguration": "setConfiguration",
    "close": "close",
}
_STATE_PREFIXES = (
    "ICEConnectionState",
    "IceConnectionState",
    "ICEGatheringState",
    "IceGatheringState",
    "SignalingState",
    "PeerConnectionState",
    "kIceConnection",
    "kIceGathering",
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
CANDIDATE_RE = re.compile(
    r"candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)((?: \S+ \S+)*)", re.IGNORECASE
)
_URL_RE = re.compile(r"(?:stuns?|turns?):[^\s,\]\}\"']+", re.IGNORECASE)
_POLICY_RE = re.compile(r"(?:iceTransportPolicy|iceTransportType|iceTransports)\W+(\w+)")
_BUNDLE_RE = re.compile(r"bundlePolicy\W+([\w-]+)")
_REST_USER = re.compile(r"^(\d{9,11}):")
_LOCALE_FORMATS = (
    "%m/%d/%Y, %I:%M:%S %p",
    "%m/%d/%Y, %H:%M:%S",
    "%d/%m/%Y, %H:%M:%S",
    "%d.%m.%Y, %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
)


def event_kind(name: str) -> str:
    """Normalized (lower-case, no ``on`` prefix) event name."""
    n = name.strip().lower()
    if n.startswith("on") and n[2:] in _ON_NAMES:
        n = n[2:]
    return n


def decode_value(value: Any) -> Any:
    """JSON-encoded update values (M142+) decoded; other strings and objects as they are."""
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in ('"', "{", "["):
            try:
                return json.loads(s)
            except ValueError:
                return value
    return value


def normalize_state(value: Any) -> str:
    s = decode_value(value)
    s = str(s if s is not None else "").strip()
    for prefix in _STATE_PREFIXES:
        if s.startswith(prefix):
            s = s[len(prefix) :]
            break
    if any(c.isupper() for c in s):
        s = _CAMEL.sub("-", s).lower()
    return s


def parse_time(value: Any) -> tuple[float | None, bool]:
    """(epoch ms, naive): numbers are epoch ms; ISO strings; locale strings (naive local time)."""
    if isinstance(value, bool) or value is None:
        return None, False
    if isinstance(value, int | float):
        return float(value), False
    s = str(value).strip()
    if not s:
        return None, False
    try:
        return float(s), False
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        dt = None
    if dt is not None:
        if dt.tzinfo is None:
            return dt.replace(tzinfo=UTC).timestamp() * 1000, True
        return dt.timestamp() * 1000, False
    for fmt in _LOCALE_FORMATS:
        try:
            dt = datetime.strptime(s, fmt)
        except ValueError:
            continue
        return dt.replace(tzinfo=UTC).timestamp() * 1000, True
    return None, False


def iso_ms(value: Any) -> float | None:
    t, _ = parse_time(value)
    return t


def normalize_type(value: Any) -> str:
    t = str(value or "").strip().lower()
    return {
        "local": "host",
        "host": "host",
        "stun": "srflx",
        "serverreflexive": "srflx",
        "srflx": "srflx",
        "prflx": "prflx",
        "peerreflexive": "prflx",
        "relay": "relay",
        "relayed": "relay",
    }.get(t, t or "unknown")


def parse_candidate_line(line: str) -> dict[str, Any] | None:
    m = CANDIDATE_RE.search(line)
    if not m:
        return None
    extras = m.group(8).split()
    opts = dict(zip(extras[0::2], extras[1::2], strict=False))
    port = int(m.group(6))
    return {
        "foundation": m.group(1),
        "component": int(m.group(2)),
        "protocol": m.group(3).lower(),
        "priority": int(m.group(4)),
        "address": m.group(5),
        "port": port,
        "type": normalize_type(m.group(7)),
        "related_address": opts.get("raddr"),
        "tcp_type": opts.get("tcptype"),
        "ufrag": opts.get("ufrag"),
    }


def _kv_text(text: str) -> dict[str, str]:
    """``url: x\\naddress: y`` or ``url: x, address: y`` → dict (legacy event values)."""
    out: dict[str, str] = {}
    parts = text.split("\n") if "\n" in text else re.split(r",\s+(?=\w+:)", text)
    for part in parts:
        key, sep, val = part.partition(":")
        if sep:
            out[key.strip()] = val.strip()
    return out


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in d and d[key] not in (None, ""):
            return d[key]
    return None


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def parse_config(value: Any) -> Config:
    """rtcConfiguration: JSON (any era), the legacy ``{ servers: [...] }`` text, or an object."""
    cfg = Config(known=True)
    data = decode_value(value)
    if isinstance(data, dict):
        servers = data.get("iceServers", data.get("servers")) or []
        if isinstance(servers, dict | str):
            servers = [servers]
        for entry in servers if isinstance(servers, list) else []:
            group: list[str] = []
            if isinstance(entry, str):
                group = _URL_RE.findall(entry) or [entry]
            elif isinstance(entry, dict):
                urls = entry.get("urls", entry.get("url")) or []
                group = [urls] if isinstance(urls, str) else [str(u) for u in urls]
                username = entry.get("username")
                if isinstance(username, str) and username:
                    m = _REST_USER.match(username)
                    if m:
                        cfg.credential_expiries.append(int(m.group(1)))
                    else:
                        cfg.static_credentials += 1
            group = [safe_url(u) for u in group]
            if group:
                cfg.server_groups.append(group)
                cfg.ice_servers.extend(group)
        policy = _get(data, "iceTransportPolicy", "iceTransportType", "iceTransports")
        cfg.ice_transport_policy = str(policy) if policy is not None else None
        bundle = data.get("bundlePolicy")
        cfg.bundle_policy = str(bundle) if bundle is not None else None
        return cfg
    text = str(data or "")
    urls = [safe_url(u) for u in _URL_RE.findall(text)]
    cfg.ice_servers = urls
    cfg.server_groups = [[u] for u in urls]
    m = _POLICY_RE.search(text)
    cfg.ice_transport_policy = m.group(1) if m else None
    m = _BUNDLE_RE.search(text)
    cfg.bundle_policy = m.group(1) if m else None
    return cfg


class EventApplier:
    """Feeds events of one PeerConnection into its report, merging candidates as it goes."""

    def __init__(self, report: PeerConnectionReport) -> None:
        self.report = report
        self._seq = 0
        self._candidates: dict[tuple[str, str, str, str, int | None], Candidate] = {}
        for cand in report.candidates:
            self._index(cand)

    # ---- candidates ------------------------------------------------------------------------
    @staticmethod
    def _key(c: Candidate) -> tuple[str, str, str, str, int | None]:
        return (c.side, c.type, c.protocol or "", (c.address or "").lower(), c.port)

    def _index(self, cand: Candidate) -> None:
        self._candidates[self._key(cand)] = cand

    def add_candidate(self, cand: Candidate) -> Candidate:
        """Merge with an already known candidate (stats and events describe the same one)."""
        existing = self._candidates.get(self._key(cand))
        if existing is None and cand.address:
            # Stats hide mDNS/private addresses (""): match on everything else.
            existing = self._candidates.get(
                (cand.side, cand.type, cand.protocol or "", "", cand.port)
            )
            if existing is not None:
                del self._candidates[self._key(existing)]
                existing.address = cand.address
                self._index(existing)
        elif existing is None and not cand.address:
            for other in self._candidates.values():
                if (other.side, other.type, other.protocol or "", other.port) == (
                    cand.side,
                    cand.type,
                    cand.protocol or "",
                    cand.port,
                ):
                    existing = other
                    break
        if existing is None:
            self.report.candidates.append(cand)
            self._index(cand)
            return cand
        if cand.t is not None and (existing.t is None or cand.t < existing.t):
            existing.t, existing.seq = cand.t, cand.seq
        for name in (
            "relay_protocol",
            "url",
            "tcp_type",
            "related_address",
            "ufrag",
            "stats_id",
        ):
            if getattr(existing, name) is None and getattr(cand, name) is not None:
                setattr(existing, name, getattr(cand, name))
        for source in cand.sources:
            if source not in existing.sources:
                existing.sources.append(source)
        return existing

    def _candidate_from(self, value: Any, side: str, t: float | None, source: str) -> None:
        data = decode_value(value)
        line: str | None = None
        extra: dict[str, Any] = {}
        if isinstance(data, dict):
            line = data.get("candidate") if isinstance(data.get("candidate"), str) else None
            extra = data
        elif isinstance(data, str):
            line = data
        if not line:
            return
        parsed = parse_candidate_line(line)
        if parsed is None or parsed["component"] != 1:
            return
        url = extra.get("url") if isinstance(extra.get("url"), str) else None
        relay_protocol = _get(extra, "relayProtocol", "relay_protocol")
        if parsed["type"] == "relay" and relay_protocol is None and url and side == "local":
            server = read_url(url)
            relay_protocol = server.transport if server is not None else "udp"
        self.add_candidate(
            Candidate(
                side=side,
                type=parsed["type"],
                protocol=parsed["protocol"],
                address=parsed["address"],
                port=parsed["port"],
                relay_protocol=str(relay_protocol) if relay_protocol else None,
                url=url if side == "local" else None,
                tcp_type=parsed["tcp_type"],
                related_address=parsed["related_address"],
                ufrag=parsed["ufrag"],
                t=t,
                sources=[source],
                seq=self._seq,
            )
        )

    def _sdp_candidates(self, value: Any, side: str, t: float | None) -> str | None:
        data = decode_value(value)
        sdp = ""
        sdp_type = None
        if isinstance(data, dict):
            sdp = str(data.get("sdp") or "")
            sdp_type = data.get("type")
        elif isinstance(data, str):
            sdp = data
            m = re.match(r"\s*type:\s*(\w+)", data)
            sdp_type = m.group(1) if m else None
        for raw in re.split(r"\r?\n|\\r\\n", sdp):
            if raw.startswith("a=candidate:"):
                self._candidate_from(raw[2:], side, t, "sdp")
        return str(sdp_type) if sdp_type else None

    # ---- errors ----------------------------------------------------------------------------
    def _candidate_error(self, value: Any, t: float | None) -> None:
        data = decode_value(value)
        if isinstance(data, str):
            data = _kv_text(data)
        if not isinstance(data, dict):
            return
        code = _int(_get(data, "error_code", "errorCode", "code"))
        url = _get(data, "url")
        if code is None or not url:
            return
        address = _get(data, "address")
        port = _int(_get(data, "port"))
        host = _get(data, "host_candidate", "hostCandidate")
        if address is None and isinstance(host, str) and host.strip(":"):
            address, _, p = host.rpartition(":")
            port = port if port is not None else _int(p)
        self.report.candidate_errors.append(
            CandidateError(
                t=t,
                url=str(url),
                code=code,
                text=str(_get(data, "error_text", "errorText", "text") or ""),
                address=str(address) if address else None,
                port=port,
                seq=self._seq,
            )
        )

    # ---- the dispatcher --------------------------------------------------------------------
    def apply(self, t: float | None, name: str, value: Any) -> None:
        kind = event_kind(name)
        report = self.report
        self._seq += 1
        seq = self._seq
        if report.created is None and t is not None:
            report.created = t
        state_kind = _KNOWN.get(kind)
        if state_kind is not None:
            report.states.append(StateChange(t, state_kind, normalize_state(value), seq))
            return
        if kind == "icecandidate":
            self._candidate_from(value, "local", t, "event")
        elif kind == "addicecandidate":
            report.remote_candidates_added += 1
            report.negotiated = True
            self._candidate_from(value, "remote", t, "event")
        elif kind == "icecandidateerror":
            self._candidate_error(value, t)
        elif kind == "setremotedescription":
            report.negotiated = True
            sdp_type = self._sdp_candidates(value, "remote", t)
            report.events.append((t, f"setRemoteDescription ({sdp_type or '?'})", seq))
        elif kind == "setlocaldescription":
            sdp_type = self._sdp_candidates(value, "local", t)
            report.events.append((t, f"setLocalDescription ({sdp_type or '?'})", seq))
        elif kind in ("setconfiguration", "create"):
            config = decode_value(value)
            if config:
                report.config = parse_config(config)
            if kind == "setconfiguration":
                report.events.append((t, "setConfiguration", seq))
        elif kind == "close":
            report.closed_at = t
            report.events.append((t, "close", seq))
        elif kind in _TIMELINE:
            report.events.append((t, _TIMELINE[kind], seq))
