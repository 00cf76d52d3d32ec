"""The supervisor's sums over its workers' snapshots (``/metrics`` with ``--workers``)."""

from __future__ import annotations

from iceward.snapshot import USAGE_QUEUED, Snapshot


def test_a_departed_worker_leaves_its_totals_not_its_levels() -> None:
    """A SIGKILLed worker's totals stay in the sums (they never go backwards); the usage records
    it held in memory went with it, so the gauge must not keep counting them."""
    dead = Snapshot(
        traffic={("to_peer", "udp"): (10, 1000)},
        active={("udp", "ipv4"): 3},
        created={"udp": 7},
        counters={"request.allocate": 7, USAGE_QUEUED: 40},
        ports_in_use=3,
        ports_total=100,
    )
    live = Snapshot(
        traffic={("to_peer", "udp"): (1, 100)},
        created={"udp": 1},
        counters={"request.allocate": 1, USAGE_QUEUED: 2},
    )
    total = Snapshot()
    total.add(dead.totals())
    total.add(live)
    assert total.traffic == {("to_peer", "udp"): (11, 1100)}
    assert total.created == {"udp": 8}
    assert total.counters == {"request.allocate": 8, USAGE_QUEUED: 2}
    assert total.active == {} and total.ports_in_use == 0  # alive with it, gone with it
    assert dead.counters[USAGE_QUEUED] == 40  # its own snapshot is left as it was
