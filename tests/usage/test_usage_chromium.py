"""Chromium's own counters against iceward's usage report, for a labelled call.

Two relay-only RTCPeerConnections in one page (tests/usage/usage_page.html) call each other
through ``iceward serve`` over UDP with a credential issued with a label, and move 1 MiB of
data-channel messages each way. The call stays up while three readings are compared:

- the server's admin API, per allocation (``/admin/v1/allocations`` traffic counters);
- the usage records of each allocation in the store, and the report (``/admin/v1/usage`` by
  label): equal to the admin counters exactly, byte for byte and packet for packet, once the
  records have caught up (read when no packet moved between the readings);
- Chromium's getStats(): the selected (relay/relay) candidate pair's ``bytesSent`` and
  ``bytesReceived`` of both connections, summed, against the label's ``bytesToPeer`` and
  ``bytesToClient``: within 1%.

What the last comparison counts, exactly: iceward counts the payload of each ChannelData
message or Send/Data indication it relays (the bytes the client asked to have sent to its peer,
and those it delivers from the peer), not the TURN framing around them (ChannelData's 4-byte
header and padding, the indications' STUN header and attributes, the UDP/IP headers). Chromium's
pair counters count the packets its ICE connection sends and receives on that pair (DTLS records
carrying SCTP), likewise without TURN framing, so neither side needs a framing correction. What
iceward relays beside them is ICE's STUN traffic over the relay (connectivity checks, consent
freshness), which the pair counters leave out: about a kilobyte here, a twentieth of a percent
of the 2.2 MB moved. So iceward's figure is at least Chromium's and at most 1% above it. The
messages are paced, and the test checks that what one connection sent the other received: a
datagram lost in a receiving socket's full buffer would be counted by the relay that delivered
it and by no browser.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iceward.lab.browser import HEADLESS_ARGS
from tests.api.test_api import cli, http
from tests.conftest import HOST, RunningServer, start_server
from tests.realclients.test_chromium import chromium_path
from tests.usage.test_usage_server import group, mint, report

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.realclient

PAGE = Path(__file__).with_name("usage_page.html")
INTERVAL = 0.5
COUNT, SIZE = 64, 16384  # 1 MiB each way
LABEL = "chromium-call"


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), args=HEADLESS_ARGS, env=env, headless=True
        )
        try:
            pg = browser.new_page()
            pg.set_content(PAGE.read_text())
            pg.wait_for_function("window.usagePageReady === true")
            yield pg
        finally:
            browser.close()


def per_allocation(server: RunningServer, ids: list[int]) -> dict[int, tuple[int, ...]]:
    """Each allocation's records summed: (bytes to peer, bytes to client, packets both ways)."""
    out = {}
    with sqlite3.connect(server.data_dir / "iceward.db") as db:
        for number in ids:
            out[number] = db.execute(
                "SELECT COALESCE(SUM(bytes_to_peer), 0), COALESCE(SUM(bytes_to_client), 0), "
                "COALESCE(SUM(packets_to_peer), 0), COALESCE(SUM(packets_to_client), 0) "
                "FROM usage_records WHERE label = ? AND allocation LIKE ?",
                (LABEL, f"%/{number}"),
            ).fetchone()
    return out


def test_chromium_call_matches_the_report_and_the_admin_counters(page: Any, tmp_path: Path) -> None:
    pg = page
    server = start_server(
        tmp_path, "--usage-interval", str(INTERVAL), "--relay-ports", "20750-20799", tls=False
    )
    try:
        app = cli(server, "keys", "add", "app")
        admin = cli(server, "keys", "add", "ops", "--admin")
        username, password = mint(server, app, "u-chromium", LABEL)
        ice = [{"urls": [f"turn:{HOST}:{server.port}?transport=udp"],
                "username": username, "credential": password}]  # fmt: skip
        call = pg.evaluate(
            "o => startCall(o)",
            {"iceServers": ice, "count": COUNT, "size": SIZE, "paceMs": 5, "timeoutMs": 20_000},
        )
        assert call["ok"], (call, server.log_text()[-3000:])
        assert call["received"] == [COUNT * SIZE, COUNT * SIZE]

        fields = ("bytes_to_peer", "bytes_to_client", "packets_to_peer", "packets_to_client")

        def admin_counters() -> dict[int, tuple[int, ...]]:
            _, live, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
            return {
                a["id"]: tuple(a["traffic"][k] for k in fields)
                for a in live
                if a["user"] == "u-chromium"
            }

        def still() -> tuple[dict[int, tuple[int, ...]], dict[str, Any], Any] | None:
            """Admin counters, report and Chromium's stats, if nothing moved between them
            and the records have caught up with the counters."""
            before = admin_counters()
            stats = pg.evaluate("() => pairStats()")
            records = per_allocation(server, list(before))
            # The report after the records it must sum: read before them, it could miss one
            # written meanwhile (records only ever grow, so read after, it has them all).
            label = group(report(server, admin, "label"), "label", LABEL)
            after = admin_counters()
            if len(before) != 2 or before != after or records != before or label is None:
                return None
            return before, label, stats

        found = None
        for _ in range(200):
            found = still()
            if found is not None:
                break
            pg.wait_for_timeout(100)
        assert found is not None, (admin_counters(), per_allocation(server, []))
        counters, label, stats = found
        assert label["bytesToPeer"] == sum(c[0] for c in counters.values())
        assert label["bytesToClient"] == sum(c[1] for c in counters.values())
        assert label["packetsToPeer"] == sum(c[2] for c in counters.values())
        assert label["packetsToClient"] == sum(c[3] for c in counters.values())
        assert label["allocations"] == 2
        for name in ("pc1", "pc2"):
            s = stats[name]
            assert (s["local"], s["remote"], s["relayProtocol"]) == ("relay", "relay", "udp")
        sent = stats["pc1"]["bytesSent"] + stats["pc2"]["bytesSent"]
        got = stats["pc1"]["bytesReceived"] + stats["pc2"]["bytesReceived"]
        # Nothing lost between the browsers: what one sent the other received.
        assert stats["pc1"]["bytesSent"] == stats["pc2"]["bytesReceived"], stats
        assert stats["pc2"]["bytesSent"] == stats["pc1"]["bytesReceived"], stats
        assert sent > 2 * COUNT * SIZE, stats
        # iceward relayed the browsers' packets and ICE's STUN checks beside them.
        assert sent <= label["bytesToPeer"] <= sent * 1.01, (label, stats)
        assert got <= label["bytesToClient"] <= got * 1.01, (label, stats)
        pg.evaluate("() => hangUp()")
    finally:
        server.stop()
