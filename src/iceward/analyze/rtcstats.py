"""rtcstats dumps → :class:`PeerConnectionReport` objects.

The format (Chromium's 'Download the "rtcstats dump"', the rtcstats library and rtcstats-server):
a first line ``RTCStatsDump``, a JSON line of metadata (``{"fileFormat": 3}``), then one JSON array
per line: ``[method, peerConnectionId, value, (url,) time]``. Times are absolute epoch ms or, in
fileFormat 3, the delta to the previous line. ``getStats``/``getstats`` values are stats maps,
either complete or delta-compressed (rtcstats' ``deltaCompression``: only changed attributes, no
``id``, a report-level ``timestamp`` and ``timestamp: 0`` meaning "the report's time").
"""

from __future__ import annotations

import json
from typing import Any

from iceward.analyze.load import InputError
from iceward.analyze.model import PeerConnectionReport
from iceward.analyze.stats import SnapshotObject, StatsObject, attach, build

ABSOLUTE_MS = 1e11  # anything smaller is a delta (or a relative time)


class _PC:
    __slots__ = ("base", "delta", "events", "objects", "report")

    def __init__(self, pc_id: str) -> None:
        self.report = PeerConnectionReport(id=pc_id, source="rtcstats")
        self.events: list[tuple[float | None, str, Any]] = []
        self.objects: dict[str, SnapshotObject] = {}
        self.base: dict[str, dict[str, Any]] = {}
        self.delta = False

    def add_stats(self, t: float | None, value: Any) -> None:
        if not isinstance(value, dict):
            return
        report_ts = value.get("timestamp")
        objects = self.objects
        if isinstance(report_ts, int | float) and not isinstance(report_ts, bool):
            # Delta-compressed: merge into the running base; every known object exists now.
            self.delta = True
            base = self.base
            for oid, obj in value.items():
                if oid == "timestamp" or not isinstance(obj, dict):
                    continue
                current = base.get(oid)
                if current is None:
                    current = base[oid] = dict(obj)
                else:
                    current.update(obj)
                if obj.get("timestamp") == 0:
                    current["timestamp"] = report_ts
            now = float(report_ts)
            for oid, obj in base.items():
                target = objects.get(oid)
                if target is None:
                    target = objects[oid] = SnapshotObject(oid)
                target.add(now, obj)
            return
        for oid, obj in value.items():
            if not isinstance(obj, dict):
                continue
            ts = obj.get("timestamp")
            when = float(ts) if isinstance(ts, int | float) and ts > ABSOLUTE_MS else t
            if when is None:
                continue
            target = objects.get(oid)
            if target is None:
                target = objects[oid] = SnapshotObject(oid)
            target.add(when, obj)


def parse_rtcstats(lines: list[str]) -> tuple[list[PeerConnectionReport], dict[str, Any]]:
    meta: dict[str, Any] = {}
    pcs: dict[str, _PC] = {}
    now: float | None = None
    start = 0
    if lines and lines[0].strip() == "RTCStatsDump":
        start = 1
    notes: list[str] = []
    body = [(i, line) for i, line in enumerate(lines[start:], start + 1) if line.strip()]
    for pos, (lineno, line) in enumerate(body):
        try:
            item = json.loads(line)
        except ValueError:
            if pos == len(body) - 1 and pos > 0:
                notes.append(f"the last line ({lineno}) is cut short and was ignored")
                break
            raise InputError(f"rtcstats dump line {lineno} is not JSON") from None
        if isinstance(item, dict):
            meta.update({k: v for k, v in item.items() if isinstance(k, str)})
            continue
        if not isinstance(item, list) or len(item) < 3 or not isinstance(item[0], str):
            raise InputError(
                f"rtcstats dump line {lineno} is not a [method, id, value, time] array"
            )
        ts = item[-1] if len(item) >= 4 else None
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            now = float(ts) if ts > ABSOLUTE_MS or now is None else now + float(ts)
        method, pc_id, value = item[0], item[1], item[2]
        if pc_id is None:
            if method == "create" and isinstance(value, dict):
                meta.setdefault("client", value)
            continue
        pc = pcs.get(str(pc_id))
        if pc is None:
            pc = pcs[str(pc_id)] = _PC(str(pc_id))
        if method.lower() == "getstats":
            pc.add_stats(now, value)
            continue
        if method == "create":
            if len(item) >= 5 and isinstance(item[3], str):
                pc.report.url = item[3]
            pc.events.append((now, "create", value if value is not None else {}))
            continue
        pc.events.append((now, method, value))
    reports: list[PeerConnectionReport] = []
    for pc in pcs.values():
        report = pc.report
        report.dump_end = now
        objects: dict[str, StatsObject] = dict(pc.objects)
        stats_candidates = build(report, objects)
        if pc.delta:
            for pair in report.pairs:
                pair.vanished = False
        report.era = f"rtcstats fileFormat {meta.get('fileFormat', '?')}" + (
            ", delta-compressed stats" if pc.delta else ""
        )
        applier = attach(report, stats_candidates)
        for t, method, value in pc.events:
            applier.apply(t, method, value)
        report.notes.extend(notes)
        reports.append(report)
    browser = None
    client = meta.get("client")
    if isinstance(client, dict):
        data = client.get("userAgentData")
        if isinstance(data, dict):
            for brand in data.get("brands") or []:
                if isinstance(brand, dict) and brand.get("brand") in ("Chromium", "Google Chrome"):
                    browser = f"{brand['brand']} {brand.get('version')}"
    return reports, {"browser": browser, "fileFormat": meta.get("fileFormat")}
