"""Report rows in the store: add, list, get, and the retention limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import update

from iceward.store import ReportRow, Store


def test_reports_kept_within_age_and_count(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ids = [store.add_report({"summary": f"r{i}", "rows": []}, f"r{i}") for i in range(5)]
    assert len(set(ids)) == 5
    assert store.get_report(ids[0]) is not None
    assert store.get_report(ids[0])["summary"] == "r0"  # type: ignore[index]
    assert store.get_report("missing") is None
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    with store._session.begin() as s:
        s.execute(update(ReportRow).where(ReportRow.id == ids[0]).values(created_at=old))
    assert store.prune_reports(dt.timedelta(days=30), 1000) == 1
    assert store.get_report(ids[0]) is None
    assert store.prune_reports(dt.timedelta(days=30), 2) == 2
    assert len(store.list_reports()) == 2
    assert store.prune_reports(dt.timedelta(days=30), 2) == 0


def test_report_ids_are_link_and_shell_safe() -> None:
    from iceward.store import new_report_id

    ids = {new_report_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 12 and i.isalnum() and i.isascii() for i in ids)
