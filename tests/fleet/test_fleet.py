"""The fleet end to end: three real nodes, a real Redis and a real PostgreSQL (one fleet for
the module; the tests that stop Redis or kill a node come last)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright
from typer.testing import CliRunner

from iceward.cli import app
from iceward.store import Store
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.turn.credentials import mint_rest_credential
from tests.fleet.conftest import (
    KEY_GRACE,
    SECRET,
    USER_QUOTA,
    Fleet,
    http,
    launch,
    wait_for,
    wait_ready,
)
from tests.net.turnclient import BlockingTurnClient, TurnError
from tests.realclients.test_chromium import CHROMIUM_ARGS, PAGE, chromium_path


def hosts(answer: dict[str, object]) -> set[str]:
    """The hosts of every URL an ice-servers answer hands out."""
    out = set()
    for server in answer["iceServers"]:  # type: ignore[attr-defined]
        for url in server["urls"]:
            out.add(urlsplit("x://" + url.split(":", 1)[1].split("?")[0]).hostname)
    return out


def ids(answer: dict[str, object]) -> list[str]:
    return [n["id"] for n in answer["nodes"]]  # type: ignore[attr-defined]


def allocate(ip: str, port: int, secret: str = SECRET, user: str = "u1") -> BlockingTurnClient:
    cred = mint_rest_credential(secret, user, 600, time.time())
    client = BlockingTurnClient((ip, port), cred.username, cred.password)
    client.allocate()
    return client


def release(client: BlockingTurnClient) -> None:
    """End the allocation (a lifetime 0 Refresh), then close the socket."""
    try:
        client.refresh(0)
    finally:
        client.close()


def allocates(ip: str, port: int, secret: str = SECRET, user: str = "u1") -> None:
    """An allocation made and ended: the node relays for this credential."""
    release(allocate(ip, port, secret, user))


def test_every_node_sees_the_fleet_with_region_state_and_load(fleet: Fleet) -> None:
    doc = fleet.fleet_view("n2")
    assert doc["redis"] == "connected" and doc["nodeId"] == "n2"
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert {k: (n["region"], n["state"]) for k, n in nodes.items()} == {
        "n1": ("eu", "serving"), "n2": ("eu", "serving"), "n3": ("us", "serving"),
    }  # fmt: skip
    n1 = nodes["n1"]
    assert n1["fresh"] and n1["age"] < 6 and n1["version"]
    assert set(n1["load"]) == {"allocations", "toPeerBps", "toClientBps", "freePorts", "cpu"}
    assert n1["load"]["freePorts"] == 1000
    assert any("127.0.0.2" in u for u in n1["urls"]["udp"]) and n1["urls"]["tls"]
    status, ready = http(fleet.nodes["n1"].url + "/readyz")
    assert status == 200 and ready["fleet"]["redis"] == "connected"
    metrics = scrape(fleet.nodes["n1"].url)
    assert 'iceward_fleet_nodes{region="eu",state="serving"} 2.0' in metrics
    assert "iceward_fleet_redis_up 1.0" in metrics

    # iceward fleet, in this process (the command line's parsing and exits are the real ones)
    runner = CliRunner()
    env = {"ICEWARD_ADMIN_KEY": fleet.admin_key, "COLUMNS": "160"}
    base = ["fleet", "--admin-url", fleet.nodes["n3"].url]
    out = runner.invoke(app, [*base, "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert {n["id"] for n in json.loads(out.stdout)["nodes"]} == {"n1", "n2", "n3"}
    table = runner.invoke(app, base, env=env)
    assert table.exit_code == 0, table.output
    for word in ("n1", "n2", "n3", "eu", "us", "serving", "s ago"):
        assert word in table.stdout
    refused = runner.invoke(app, [*base[:-1], "http://127.0.0.1:9"], env=env)
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "cannot reach http://127.0.0.1:9" in refused.stderr


def test_region_by_request_by_client_address_and_by_the_issuing_node(fleet: Fleet) -> None:
    status, answer = fleet.issue("n3", region="eu")
    assert status == 200, answer
    assert ids(answer)[0] in ("n1", "n2") and len(answer["nodes"]) == 1
    assert hosts(answer) <= {"127.0.0.2", "127.0.0.3"}
    assert answer["nodes"][0]["region"] == "eu"
    # clientIp through the region map (IPv4 and IPv6), then through the .mmdb (DE, then EU)
    assert ids(fleet.issue("n1", clientIp="203.0.113.9")[1]) == ["n3"]
    assert ids(fleet.issue("n1", clientIp="2001:db8:1::7")[1]) == ["n3"]
    assert ids(fleet.issue("n3", clientIp="2001:db8:e::7")[1])[0] in ("n1", "n2")
    assert ids(fleet.issue("n3", clientIp="192.0.2.44")[1])[0] in ("n1", "n2")
    # nothing to go by: the issuing node's region
    assert ids(fleet.issue("n3")[1]) == ["n3"]
    assert ids(fleet.issue("n3", clientIp="100.64.0.1")[1]) == ["n3"]
    # count: the region's nodes first, then its fallback's
    status, three = fleet.issue("n1", region="eu", count=3, transports=["udp"])
    assert status == 200 and sorted(ids(three)[:2]) == ["n1", "n2"] and ids(three)[2] == "n3"
    urls = [u for s in three["iceServers"] for u in s["urls"] if u.startswith("turn:")]
    assert [u.split(":")[1] for u in urls] == [
        {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4"}[i] for i in ids(three)
    ]
    # a region without nodes: its fallback; an unknown one: any node
    assert ids(fleet.issue("n1", region="ap")[1]) == ["n3"]
    assert len(ids(fleet.issue("n1", region="mars")[1])) == 1
    status, bad = fleet.issue("n1", clientIp="not-an-address")
    assert status == 422 and "clientIp" in json.dumps(bad)
    assert fleet.issue("n1", count=9)[0] == 422
    # the issuance log (shared, in PostgreSQL) records the nodes
    status, log = http(fleet.nodes["n2"].url + "/admin/v1/issuance?limit=20", key=fleet.admin_key)
    assert status == 200
    assert any(entry.get("nodes") == three["nodes"] for entry in log)


def test_the_least_loaded_node_of_a_region_is_chosen(fleet: Fleet) -> None:
    clients = [allocate("127.0.0.2", fleet.nodes["n1"].port, user=f"load{i}") for i in range(3)]
    try:
        wait_for(
            lambda: (
                {n["id"]: n for n in fleet.fleet_view("n3")["nodes"]}["n1"]["load"]["allocations"]
                >= 3
            ),
            6,
            "n1's heartbeat shows its allocations",
        )
        chosen = {ids(fleet.issue("n3", region="eu")[1])[0] for _ in range(10)}
        assert chosen == {"n2"}
        status, two = fleet.issue("n3", region="eu", count=2)
        assert status == 200 and ids(two) == ["n2", "n1"]
    finally:
        for client in clients:
            release(client)


def test_chromium_relays_a_data_channel_through_the_node_it_was_issued(fleet: Fleet) -> None:
    status, answer = fleet.issue("n3", region="eu", transports=["udp"], user="browser")
    assert status == 200
    issued = {"n1": "127.0.0.2", "n2": "127.0.0.3"}[ids(answer)[0]]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.set_content(PAGE.read_text())
            page.wait_for_function("window.relayPageReady === true")
            report = page.evaluate(
                "opts => runRelayTest(opts)",
                {"iceServers": answer["iceServers"], "count": 10, "timeoutMs": 10_000},
            )
        finally:
            browser.close()
    assert report["ok"], report
    assert report["received"]["pc1"] == [f"pc2->pc1 #{i}" for i in range(10)], report
    for name in ("pc1", "pc2"):
        local = report["selected"][name]["local"]
        assert local["candidateType"] == "relay" and local["address"] == issued, report


def test_the_user_quota_counts_allocations_on_every_node(fleet: Fleet) -> None:
    n1, n2 = fleet.nodes["n1"], fleet.nodes["n2"]
    held = [allocate("127.0.0.2", n1.port, user="quota-user") for _ in range(USER_QUOTA)]
    try:

        def refused_on_n2() -> bool:
            try:
                allocates("127.0.0.3", n2.port, user="quota-user")
            except TurnError as exc:
                return exc.code == 486  # Allocation Quota Reached
            return False

        wait_for(refused_on_n2, 6, "n2 counts the user's allocations on n1", step=0.3)
        allocates("127.0.0.3", n2.port, user="another-user")
    finally:
        for client in held:
            release(client)
    wait_for(lambda: not refused_on_n2(), 6, "n2 sees the allocations on n1 ended", step=0.3)


def test_a_second_node_with_the_same_id_refuses_to_start(fleet: Fleet) -> None:
    cmd = fleet.command("n1")
    cmd[cmd.index("--listen") + 1] = "127.0.0.5"
    workdir = fleet.root / "n1-again"
    proc = launch(workdir, cmd)
    assert proc.wait(30) == 2
    text = (workdir / "server.log").read_text()
    errors = [line for line in text.splitlines() if "error" in line]
    assert len(errors) == 1 and "'n1'" in errors[0] and "Traceback" not in text
    assert {n["id"] for n in fleet.fleet_view("n1")["nodes"]} == {"n1", "n2", "n3"}


def test_a_secret_added_on_one_node_validates_on_another_and_revoked_keys_fail_everywhere(
    fleet: Fleet,
) -> None:
    value = "a-rotated-shared-secret-0123456789"
    status, _ = http(
        fleet.nodes["n1"].url + "/admin/v1/secrets",
        "POST",
        {"name": "rotated", "value": value},
        fleet.admin_key,
    )
    assert status == 201
    added = time.monotonic()

    def allocates_on_n3() -> bool:
        try:
            allocates("127.0.0.4", fleet.nodes["n3"].port, secret=value)
        except (TurnError, OSError):
            return False
        return True

    wait_for(allocates_on_n3, 2.0, "a secret added on n1 validates on n3", step=0.05)
    assert time.monotonic() - added < 2.0
    store = Store(fleet.postgres.url)
    try:
        key = store.add_api_key("short-lived")
        for node in fleet.nodes:
            assert http(fleet.nodes[node].url + "/api/v1/ice-servers", "POST",
                        {"user": "x"}, key)[0] == 200  # fmt: skip
        store.revoke_api_key("short-lived")
    finally:
        store.close()
    for node in fleet.nodes:
        url = fleet.nodes[node].url + "/api/v1/ice-servers"
        status, doc = http(url, "POST", {"user": "x"}, key)
        assert status == 401 and "revoked" in doc["detail"]


def test_postgresql_down_relaying_and_known_keys_go_on_then_503(fleet: Fleet) -> None:
    assert fleet.issue("n2")[0] == 200  # n2 has checked the app's key: its last good reading
    fleet.postgres.stop()
    stopped = time.monotonic()
    try:
        status, answer = fleet.issue("n2", region="us")
        assert status == 200 and ids(answer) == ["n3"]
        cred = answer["iceServers"][-1]
        client = BlockingTurnClient(
            ("127.0.0.4", fleet.nodes["n3"].port), cred["username"], cred["credential"]
        )
        client.allocate()  # a credential minted while the database is down relays
        release(client)
        unknown = http(fleet.nodes["n2"].url + "/api/v1/ice-servers", "POST", {"user": "x"},
                       "iwk_never-issued")  # fmt: skip
        assert unknown[0] == 401
        time.sleep(max(0.0, KEY_GRACE + 0.5 - (time.monotonic() - stopped)))
        status, doc = fleet.issue("n2")
        assert status == 503 and "data store is unavailable" in doc["detail"]
        allocates("127.0.0.2", fleet.nodes["n1"].port)  # relaying never needed it
    finally:
        fleet.postgres.start()
    wait_for(lambda: fleet.issue("n2")[0] == 200, 10, "n2 issues again")
    for node in fleet.nodes.values():
        assert "Traceback" not in node.log_text()


def test_redis_down_nodes_relay_issue_locally_without_spinning_and_reform(fleet: Fleet) -> None:
    n1 = fleet.nodes["n1"]
    fleet.redis.stop()
    try:
        ready = wait_for(
            lambda: (doc := http(n1.url + "/readyz")[1])["fleet"]["redis"] == "unreachable" and doc,
            4,
            "n1 says Redis is unreachable",
        )
        assert http(n1.url + "/readyz")[0] == 200 and "this node only" in ready["fleet"]["reason"]
        assert ids(fleet.issue("n1", region="us")[1]) == ["n1"]
        allocates("127.0.0.4", fleet.nodes["n3"].port)
        before = cpu_seconds(n1.proc.pid)
        time.sleep(3)
        assert cpu_seconds(n1.proc.pid) - before < 0.5  # no busy loop while Redis is away
        assert n1.log_text().count("fleet: Redis at") == 1
        metrics = scrape(n1.url)
        assert "iceward_fleet_redis_up 0.0" in metrics
        assert 'iceward_fleet_placements_total{where="local"} 1.0' in metrics
        assert 'iceward_fleet_heartbeats_total{result="failed"}' in metrics
    finally:
        fleet.redis.start()
    wait_for(
        lambda: all(len(fleet.fleet_view(n)["nodes"]) == 3 for n in ("n1", "n3")),
        6,
        "the fleet reforms",
    )
    assert fleet.fleet_view("n1")["redis"] == "connected"
    assert ids(fleet.issue("n1", region="us")[1]) == ["n3"]


def test_a_killed_node_is_not_issued_once_its_heartbeat_expires(fleet: Fleet) -> None:
    assert sorted(ids(fleet.issue("n3", region="eu", count=2)[1])) == ["n1", "n2"]
    fleet.kill("n2")
    killed = time.monotonic()  # its last heartbeat was before this

    def excluded_everywhere() -> bool:
        return all(
            "n2" not in ids(fleet.issue(issuer, region="eu", count=2)[1]) for issuer in ("n1", "n3")
        )

    wait_for(excluded_everywhere, 7, "n2 left out of every issuer's answers", step=0.1)
    excluded = time.monotonic() - killed
    assert excluded <= 6.5, excluded  # 6 s, and the time the answers take on a busy machine
    time.sleep(max(0.0, killed + 6.0 - time.monotonic()))
    for _ in range(10):
        assert excluded_everywhere()


def test_a_node_restarted_right_after_sigkill_takes_its_id_back(fleet: Fleet) -> None:
    fleet.kill("n3")
    restarted = wait_ready(fleet.start("n3", *fleet.nodes["n3"].flags))
    assert restarted.proc.poll() is None
    wait_for(
        lambda: (
            "n3" in {n["id"] for n in fleet.fleet_view("n1")["nodes"]}
            and ids(fleet.issue("n1", region="us")[1]) == ["n3"]
        ),
        6,
        "the restarted n3 is issued again",
    )


def test_a_draining_node_is_left_out_and_sends_new_allocations_within_its_region(
    fleet: Fleet,
) -> None:
    n4 = wait_ready(fleet.start("n4"))  # region us, beside n3
    wait_for(lambda: "n4" in {n["id"] for n in fleet.fleet_view("n3")["nodes"]}, 6, "n4 joins")
    held = allocate("127.0.0.5", n4.port)  # keeps the draining node up
    try:
        status, _ = http(n4.url + "/admin/v1/drain", "POST", {}, fleet.admin_key)
        assert status == 200

        def published() -> bool:
            states = {n["id"]: n["state"] for n in fleet.fleet_view("n3")["nodes"]}
            return states.get("n4") == "draining"

        wait_for(published, 4, "n4 published as draining")
        for _ in range(5):
            assert "n4" not in ids(fleet.issue("n3", region="us", count=2)[1])
        cred = mint_rest_credential(SECRET, "late", 600, time.time())
        newcomer = BlockingTurnClient(("127.0.0.5", n4.port), cred.username, cred.password)
        try:
            with pytest.raises(TurnError) as moved:
                newcomer.allocate()
        finally:
            newcomer.close()
        assert moved.value.code == 300 and moved.value.reply is not None
        where = A.decode_address(moved.value.reply.get(C.ALTERNATE_SERVER) or b"")
        assert where == ("127.0.0.4", fleet.nodes["n3"].port)  # the region's serving node
        assert held.refresh(600)  # what it relays already goes on
    finally:
        release(held)
    assert n4.proc.wait(20) == 0  # drained: its last allocation ended


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return str(response.read().decode())
