"""chrome://webrtc-internals dumps of every era → :class:`PeerConnectionReport` objects.

Eras (all in one code path):

- 2014 legacy stats: ``Conn-audio-1-0-googActiveConnection``, ``updateLog`` entries with a
  locale ``time`` string and values like ``ICEConnectionStateChecking``, ``rtcConfiguration`` as
  ``{ servers: [...], iceTransportType: all }`` text;
- standard stats with ``RTCIceCandidatePair_*`` ids and no per-point timestamps (before M117):
  point times are spread between each series' ``startTime`` and ``endTime``;
- short ids (``CP…``, ``I…``, ``T01``) with a ``-timestamp`` series per object (M117+);
- JSON-quoted update values (M142+) and ``on``-prefixed event names with snake_case JSON
  payloads (M144+).

Stats ``values`` are JSON strings of arrays; series names are split as webrtc-internals itself
and the usual importers do: at the last ``-``, or at ``-[`` for computed series (``[bytesSent_in_
bits/s]``, which are skipped). Only the attributes the analysis needs are ever decoded, which is
what keeps a 50 MB dump fast.
"""

from __future__ import annotations

import json
from typing import Any

from iceward.analyze.events import event_kind, iso_ms, normalize_state, parse_config, parse_time
from iceward.analyze.load import InputError
from iceward.analyze.model import PeerConnectionReport
from iceward.analyze.stats import NEEDED, StatsObject, attach, build

BUFFER_POINTS = 1000
_SETUP_EVENTS = {
    "createoffer",
    "createanswer",
    "setlocaldescription",
    "setremotedescription",
    "createdatachannel",
    "addtransceiver",
    "addtrack",
    "addstream",
    "transceiveradded",
    "negotiationneeded",
    "renegotiationneeded",
}


class _Context:
    __slots__ = ("earliest_cut", "limited")

    def __init__(self) -> None:
        self.limited = 0
        self.earliest_cut: float | None = None


class InternalsObject:
    """One stats id of a webrtc-internals dump: its series, decoded on demand."""

    __slots__ = ("_cache", "_ctx", "_times", "_type", "id", "raw")

    def __init__(self, id_: str, ctx: _Context) -> None:
        self.id = id_
        self.raw: dict[str, dict[str, Any]] = {}
        self._type: str | None = None
        self._cache: dict[str, list[tuple[float, Any]]] = {}
        self._times: list[float] | bool | None = False  # False: not decoded yet
        self._ctx = ctx

    @property
    def type(self) -> str | None:
        return self._type

    def add(self, attr: str, entry: dict[str, Any]) -> None:
        if self._type is None:
            st = entry.get("statsType")
            if isinstance(st, str) and st:
                self._type = st
        self.raw[attr] = entry

    def _values(self, attr: str) -> list[Any]:
        entry = self.raw.get(attr)
        if entry is None:
            return []
        values = entry.get("values")
        if isinstance(values, str):
            try:
                values = json.loads(values)
            except ValueError:
                return []
        if not isinstance(values, list):
            return []
        if len(values) >= BUFFER_POINTS:
            self._ctx.limited += 1
        return values

    def _timestamps(self) -> list[float] | None:
        if self._times is False:
            ts = [float(v) for v in self._values("timestamp") if isinstance(v, int | float)]
            self._times = ts or None
        return self._times if isinstance(self._times, list) else None

    def series(self, attr: str) -> list[tuple[float, Any]]:
        cached = self._cache.get(attr)
        if cached is not None:
            return cached
        values = self._values(attr)
        if not values:
            self._cache[attr] = []
            return []
        entry = self.raw[attr]
        n = len(values)
        start = iso_ms(entry.get("startTime"))
        end = iso_ms(entry.get("endTime"))
        times: list[float] | None = None
        ts = self._timestamps()
        if ts:
            if len(ts) == n:
                times = ts
            else:
                window = ts
                if start is not None and end is not None:
                    window = [t for t in ts if start - 500 <= t <= end + 500]
                if len(window) >= n:
                    times = window[-n:]
                elif len(ts) >= n:
                    times = ts[-n:]
        if times is None:
            if start is None:
                start = end if end is not None else 0.0
            if end is None:
                end = start
            step = (end - start) / (n - 1) if n > 1 else 0.0
            times = [start + i * step for i in range(n)]
        if n >= BUFFER_POINTS and (
            self._ctx.earliest_cut is None or times[0] < self._ctx.earliest_cut
        ):
            self._ctx.earliest_cut = times[0]
        out = list(zip(times, values, strict=False))
        self._cache[attr] = out
        return out

    def last(self, attr: str) -> Any:
        entry = self.raw.get(attr)
        if entry is None:
            return None
        points = self.series(attr)
        return points[-1][1] if points else None

    def times(self) -> tuple[float | None, float | None]:
        ts = self._timestamps()
        if ts:
            return ts[0], ts[-1]
        starts: list[float] = []
        ends: list[float] = []
        for entry in self.raw.values():
            s, e = iso_ms(entry.get("startTime")), iso_ms(entry.get("endTime"))
            if s is not None:
                starts.append(s)
            if e is not None:
                ends.append(e)
        return (min(starts) if starts else None, max(ends) if ends else None)


def split_series_name(name: str) -> tuple[str, str] | None:
    """``CP1_2-bytesSent`` → (``CP1_2``, ``bytesSent``); ``T01-[bytesSent_in_bits/s]`` too."""
    if name.endswith("]"):
        idx = name.find("-[")
        if idx > 0:
            return name[:idx], name[idx + 1 :]
    idx = name.rfind("-")
    if idx <= 0:
        return None
    return name[:idx], name[idx + 1 :]


def stats_objects(stats: Any, ctx: _Context) -> tuple[dict[str, StatsObject], list[str]]:
    objects: dict[str, InternalsObject] = {}
    ids_seen: list[str] = []
    if not isinstance(stats, dict):
        return {}, []
    for name, entry in stats.items():
        if not isinstance(entry, dict):
            continue
        split = split_series_name(str(name))
        if split is None:
            continue
        oid, attr = split
        if attr != "timestamp" and attr not in NEEDED:
            if len(ids_seen) < 50:
                ids_seen.append(oid)
            continue
        obj = objects.get(oid)
        if obj is None:
            obj = objects[oid] = InternalsObject(oid, ctx)
            ids_seen.append(oid)
        obj.add(attr, entry)
    # Objects with only a timestamp series (certificates, codecs...) add nothing.
    useful: dict[str, StatsObject] = {
        oid: obj for oid, obj in objects.items() if set(obj.raw) - {"timestamp"}
    }
    return useful, ids_seen


def detect_era(log: list[Any], ids: list[str]) -> str:
    names = [str(e.get("type", "")) for e in log if isinstance(e, dict)]
    values = [e.get("value") for e in log if isinstance(e, dict)]
    parts: list[str] = []
    if any(i.startswith(("Conn-", "Channel-", "bweforvideo", "googTrack")) for i in ids):
        parts.append("legacy goog stats (2014 era)")
    elif any(i.startswith("RTC") for i in ids):
        parts.append("RTC*_ stats ids (before M117)")
    elif ids:
        parts.append("short stats ids (M117+)")
    if any(n.startswith("on") and n == n.lower() and len(n) > 2 for n in names):
        parts.append("on-prefixed events (M144+)")
    if any(isinstance(v, str) and v.startswith('"') for v in values):
        parts.append("JSON-quoted values (M142+)")
    if any(
        isinstance(v, str) and v.startswith(("ICEConnectionState", "SignalingState"))
        for v in values
    ):
        parts.append("legacy state names")
    return ", ".join(parts)


def _naive_offset(
    events: list[tuple[float | None, bool, str, Any]], stats_start: float | None
) -> float:
    """Legacy ``time`` strings are local time without a zone: guess the offset from the stats.

    The stats series carry UTC times and webrtc-internals starts polling them when ICE is being
    established, so the UTC offset is the difference to the ICE connected (else last) event,
    rounded to 15 minutes.
    """
    if stats_start is None:
        return 0.0
    naive = [(t, kind, value) for t, is_naive, kind, value in events if is_naive and t is not None]
    if not naive:
        return 0.0
    ref = None
    for t, kind, value in naive:
        if event_kind(kind) == "iceconnectionstatechange" and "onnected" in str(value):
            ref = t
            break
    if ref is None:
        ref = naive[-1][0]
    assert ref is not None
    quarter = 15 * 60 * 1000
    return round((stats_start - ref) / quarter) * quarter


def parse_internals(data: dict[str, Any]) -> tuple[list[PeerConnectionReport], dict[str, Any]]:
    pcs = data.get("PeerConnections")
    if not isinstance(pcs, dict):
        raise InputError("'PeerConnections' is not an object: not a usable webrtc-internals dump")
    dump_time, _ = parse_time(data.get("timestamp"))
    meta: dict[str, Any] = {"browser": _browser(data)}
    reports: list[PeerConnectionReport] = []
    for pc_id, pc in pcs.items():
        if not isinstance(pc, dict):
            raise InputError(f"PeerConnections[{pc_id!r}] is not an object: not a usable dump")
        reports.append(_parse_pc(str(pc_id), pc, dump_time))
    return reports, meta


def _browser(data: dict[str, Any]) -> str | None:
    ua = data.get("UserAgentData")
    if isinstance(ua, dict):
        for item in ua.get("fullVersionList") or ua.get("brands") or []:
            if isinstance(item, dict) and item.get("brand") in ("Chromium", "Google Chrome"):
                return f"{item['brand']} {item.get('version')}"
    agent = data.get("UserAgent")
    if isinstance(agent, str):
        for token in agent.split():
            if token.startswith(("Chrome/", "HeadlessChrome/")):
                return "Chrome " + token.split("/", 1)[1]
    return None


def _parse_pc(pc_id: str, pc: dict[str, Any], dump_time: float | None) -> PeerConnectionReport:
    report = PeerConnectionReport(id=pc_id, source="webrtc-internals")
    url = pc.get("url")
    report.url = str(url) if url else None
    report.dump_end = dump_time
    if "rtcConfiguration" in pc:
        report.config = parse_config(pc.get("rtcConfiguration"))
    ctx = _Context()
    objects, ids = stats_objects(pc.get("stats"), ctx)
    stats_candidates = build(report, objects)
    report.series_at_buffer_limit = ctx.limited
    if ctx.limited:
        report.extra["buffer_cut_from"] = ctx.earliest_cut

    log = pc.get("updateLog")
    log = log if isinstance(log, list) else []
    report.era = detect_era(log, ids)
    raw_events: list[tuple[float | None, bool, str, Any]] = []
    for entry in log:
        if not isinstance(entry, dict):
            continue
        if "timestamp" in entry:
            t, naive = parse_time(entry.get("timestamp"))
        else:
            t, naive = parse_time(entry.get("time"))
        raw_events.append((t, naive, str(entry.get("type", "")), entry.get("value")))
    shift = _naive_offset(raw_events, report.stats_start)

    applier = attach(report, stats_candidates)
    for t, naive, kind, value in raw_events:
        applier.apply(t + shift if (naive and t is not None) else t, kind, value)
    report.log_starts_late = starts_late(raw_events)
    return report


def starts_late(raw_events: list[tuple[float | None, bool, str, Any]]) -> bool:
    """The log begins with the call already set up (webrtc-internals opened mid-call).

    Chromium then replays the current descriptions and states: signaling is 'stable' without
    a createOffer/createAnswer before it, ICE is connected without ever 'checking'.
    """
    created_sdp = False
    seen: set[str] = set()
    for _, _, name, value in raw_events:
        kind = event_kind(name)
        if kind in ("createoffer", "createanswer"):
            created_sdp = True
        if kind not in ("signalingstatechange", "iceconnectionstatechange"):
            continue
        if kind in seen:
            continue
        seen.add(kind)
        state = normalize_state(value)
        if kind == "signalingstatechange" and state == "stable" and not created_sdp:
            return True
        if kind == "iceconnectionstatechange" and state in ("connected", "completed"):
            return True
    return False
