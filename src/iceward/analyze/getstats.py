"""A getStats() export → one :class:`PeerConnectionReport`.

Accepted shapes: one snapshot as an array of stats objects (``[...stats.values()]``) or as a map
id → stats object (``Object.fromEntries(stats)``), or a list of such snapshots taken over time.
Chromium and Firefox stats both work (Firefox marks the selected pair with ``selected: true``).
There is no configuration and no event log in such an export: the findings say what that leaves
unknown.
"""

from __future__ import annotations

from typing import Any

from iceward.analyze.load import is_snapshot
from iceward.analyze.model import PeerConnectionReport
from iceward.analyze.stats import SnapshotObject, StatsObject, attach, build


def _items(snapshot: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(snapshot, list):
        return [(str(o.get("id", i)), o) for i, o in enumerate(snapshot) if isinstance(o, dict)]
    return [
        (str(v.get("id", k)), v)
        for k, v in snapshot.items()
        if k != "timestamp" and isinstance(v, dict)
    ]


def parse_getstats(data: Any) -> tuple[list[PeerConnectionReport], dict[str, Any]]:
    snapshots = [data] if is_snapshot(data) else list(data)
    objects: dict[str, SnapshotObject] = {}
    for index, snapshot in enumerate(snapshots):
        items = _items(snapshot)
        times = [
            float(o["timestamp"])
            for _, o in items
            if isinstance(o.get("timestamp"), int | float) and not isinstance(o["timestamp"], bool)
        ]
        fallback = max(times) if times else float(index * 1000)
        for oid, obj in items:
            ts = obj.get("timestamp")
            t = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else fallback
            target = objects.get(oid)
            if target is None:
                target = objects[oid] = SnapshotObject(oid)
            target.add(t, obj)
    report = PeerConnectionReport(id="getStats", source="getstats")
    report.era = f"getStats() export, {len(snapshots)} snapshot(s)"
    stats_objects: dict[str, StatsObject] = dict(objects)
    candidates = build(report, stats_objects)
    attach(report, candidates)
    if len(snapshots) == 1:
        for pair in report.pairs:
            pair.vanished = False
    return [report], {"snapshots": len(snapshots)}
