"""Block quotas on running allocations, on an injected clock and a real SQLite store: with
``--quota-throttle-bps`` an allocation is throttled once while its subject is over quota, and
released at the next day (the period's use starts from zero), not before; without it, it ends;
a record written twice counts once, also in a store made by an older iceward."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from iceward.store import Store
from iceward.turn.allocation import Allocation, FiveTuple
from iceward.usage.enforce import Enforcer, evaluate
from iceward.usage.record import UsageRecord
from iceward.usage.store import UsageStore

DAY1 = dt.datetime(2026, 11, 30, 22, 0, tzinfo=dt.UTC).timestamp()
MIDNIGHT = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()


def allocation(number: int, account: str) -> Allocation:
    return Allocation(
        id=number, five_tuple=FiveTuple("udp", ("127.0.0.1", 4000 + number), ("127.0.0.1", 3478)),
        username=f"9999999999:{account}", account=account, key=b"k", algorithm=1, relays={},
        expires=0.0, created=0.0, transaction_id=b"t" * 12, allocate_response=b"",
    )  # fmt: skip


def record(user: str, seq: int, end: float, nbytes: int) -> UsageRecord:
    return UsageRecord(
        allocation="n/b/1", node="n", region="", user=user, username=f"9999999999:{user}",
        transport="udp", family="ipv4", started_at=DAY1, period_start=end - 60, period_end=end,
        bytes_to_peer=nbytes, seq=seq,
    )  # fmt: skip


def test_a_throttle_lifts_when_the_period_changes(tmp_path: Path) -> None:
    store = UsageStore(Store(f"sqlite:///{tmp_path / 'usage.db'}"))
    store.set_quota("user", "tp", 4000, "day", "block")
    over = [record("tp", 0, DAY1 + 60, 3000), record("tp", 1, DAY1 + 120, 2000)]
    store.write(over)
    store.write(over)  # handed on twice: counted once
    running = [allocation(1, "tp"), allocation(2, "other")]
    enforcer = Enforcer(throttle=1000)

    def decide(now: float) -> tuple[list[int], list[int], list[int]]:
        verdict = evaluate(store, now)
        actions = enforcer.decide(running, lambda account, _: verdict.users.get(account))
        return (
            [a.id for a in actions.end],
            [a.id for a in actions.throttle],
            [a.id for a in actions.release],
        )

    assert "relayed 5.00 kB of 4.00 kB this day" in evaluate(store, DAY1 + 180).users["tp"]
    assert decide(DAY1 + 180) == ([], [1], [])
    assert decide(DAY1 + 240) == ([], [], [])  # throttled once, still over
    store.write([record("tp", 2, MIDNIGHT + 60, 100)])  # the next day's first bytes
    assert decide(MIDNIGHT - 1) == ([], [], [])  # the old day: still over
    assert decide(MIDNIGHT + 120) == ([], [], [1])  # a new day: under quota, released
    assert decide(MIDNIGHT + 180) == ([], [], [])
    store.write([record("tp", 3, MIDNIGHT + 240, 4000)])  # over again in the new day
    assert decide(MIDNIGHT + 300) == ([], [1], [])
    running.pop(0)  # it ended: forgotten
    assert decide(MIDNIGHT + 360) == ([], [], []) and enforcer.throttled == set()
    # Without a throttle a blocked subject's allocations end.
    users = evaluate(store, MIDNIGHT + 400).users
    ended = Enforcer(throttle=0).decide([allocation(3, "tp")], lambda a, _: users.get(a)).end
    assert [a.id for a in ended] == [3]
    store.store.close()


def test_a_store_made_before_sequence_numbers_gets_the_key(tmp_path: Path) -> None:
    """Rows of an older iceward (no ``seq``) stay and count; new records are keyed."""
    db = tmp_path / "old.db"
    UsageStore(Store(f"sqlite:///{db}")).store.close()
    with sqlite3.connect(db) as conn:  # the table as an older iceward made it, with a row
        conn.execute("DROP INDEX usage_records_key")
        conn.execute("ALTER TABLE usage_records DROP COLUMN seq")
        conn.execute(
            "INSERT INTO usage_records (allocation, node, region, user, username, transport, "
            "family, started_at, period_start, period_end, final, reason, bytes_to_peer, "
            "bytes_to_client, packets_to_peer, packets_to_client, peers) "
            "VALUES ('n/old/1', 'n', '', 'tp', 'x', 'udp', 'ipv4', 0, ?, ?, 1, '', 700, 0, 1, 0, "
            "'[]')",
            (DAY1, DAY1 + 1),
        )
    store = UsageStore(Store(f"sqlite:///{db}"))
    store.write([record("tp", 0, DAY1 + 60, 300)])
    store.write([record("tp", 0, DAY1 + 60, 300)])
    assert store.consumed("user", "tp", DAY1 - 1) == 1000
    store.store.close()
