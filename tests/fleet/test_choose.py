"""The fleet's decisions without a network: which nodes are handed out, which node a draining
node names as its alternate, region files and their errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iceward.config import SettingsError, load_settings
from iceward.fleet.alternates import Alternate
from iceward.fleet.choose import choose
from iceward.fleet.member import FleetMember
from iceward.fleet.node import Listener, Load, NodeInfo
from iceward.fleet.regions import GeoIp, RegionFileError, RegionMap, RegionResolver, parse_ip
from iceward.snapshot import Snapshot
from tests.fleet.mmdb import write_mmdb


def node(
    ident: str,
    region: str,
    *,
    allocations: int = 0,
    state: str = "serving",
    age: float = 0.0,
    ip: str = "192.0.2.1",
    tls_name: str | None = None,
) -> NodeInfo:
    now = time.time()
    return NodeInfo(
        id=ident,
        region=region,
        instance=ident,
        version="test",
        state=state,  # type: ignore[arg-type]
        at=now - age,
        started=now - 100,
        urls={"udp": [f"turn:{ip}:3478?transport=udp"]},
        listeners=(
            Listener("udp", ip, 3478),
            Listener("tls", ip, 5349),
            Listener("udp", "2001:db8::" + ident[-1], 3478),
        ),
        tls_name=tls_name,
        load=Load(allocations=allocations, free_ports=100),
    )


def test_least_loaded_healthy_nodes_of_the_region_then_fallbacks_then_any() -> None:
    now = time.time()
    nodes = [
        node("a", "eu", allocations=5),
        node("b", "eu", allocations=1),
        node("c", "eu", state="draining"),
        node("d", "eu", age=7.0),  # missed three beats
        node("e", "us-east", allocations=9),
        node("f", "us-west"),
        node("g", "ap"),
    ]
    fallback = {"eu": ["us-east", "us-west"]}
    pick = lambda region, count: [n.id for n in choose(nodes, region, count, fallback, now)]  # noqa: E731
    assert pick("eu", 1) == ["b"]
    assert pick("eu", 2) == ["b", "a"]
    assert pick("eu", 4) == ["b", "a", "e", "f"]
    assert pick("us-west", 2) == ["f", "g"]  # no fallback named: the least loaded anywhere
    assert pick("mars", 1) in (["f"], ["g"])
    assert choose([node("d", "eu", age=7.0)], "eu", 1, fallback, now) == []


def test_a_node_with_no_free_relay_port_comes_last() -> None:
    busy = node("a", "eu", allocations=50)
    empty = NodeInfo(**{**_fields(node("b", "eu")), "load": Load(allocations=0, free_ports=0)})
    assert [n.id for n in choose([empty, busy], "eu", 2, {}, time.time())] == ["a", "b"]


def _fields(info: NodeInfo) -> dict[str, object]:
    return {name: getattr(info, name) for name in info.__slots__}  # type: ignore[attr-defined]


async def _snapshot() -> Snapshot:
    return Snapshot()


def member_with(others: list[NodeInfo]) -> FleetMember:
    member = FleetMember(
        url="redis://127.0.0.1:9/0",  # never reached: alternate() reads memory only
        node_id="self",
        region="eu",
        version="test",
        public_uris=lambda: ["turn:192.0.2.9:3478?transport=udp"],
        own_ips=["192.0.2.9"],
        snapshot=_snapshot,
    )
    member._others = {n.id: n for n in others}
    return member


def test_the_alternate_is_a_healthy_serving_node_of_the_region_and_family() -> None:
    member = member_with(
        [
            node("a1", "eu", allocations=3, ip="192.0.2.1", tls_name="a.example.net"),
            node("b2", "eu", allocations=1, ip="192.0.2.2"),
            node("c3", "eu", state="draining", ip="192.0.2.3"),
            node("d4", "eu", age=9.0, ip="192.0.2.4"),
            node("e5", "us", ip="192.0.2.5"),
        ]
    )
    assert member.alternate(socket.AF_INET, "udp") == Alternate(("192.0.2.2", 3478), None)
    assert member.alternate(4, "udp") == Alternate(("192.0.2.2", 3478), None)
    assert member.alternate(socket.AF_INET6, "udp") == Alternate(("2001:db8::2", 3478), None)
    assert member.alternate(socket.AF_INET6, "tls") is None  # no IPv6 TLS listener anywhere
    assert member.alternate(socket.AF_INET, "tcp") is None
    only_a = member_with([node("a1", "eu", ip="192.0.2.1", tls_name="a.example.net")])
    assert only_a.alternate(socket.AF_INET, "tls") == Alternate(
        ("192.0.2.1", 5349), "a.example.net"
    )
    member.failure = "Connection refused"  # Redis down: this node alone, no alternate
    assert member.alternate(socket.AF_INET, "udp") is None


def test_heartbeats_that_are_not_one_are_ignored() -> None:
    good = node("a", "eu")
    assert NodeInfo.decode(good.encode()) == good
    for junk in (b"", b"{}", b"[1]", b'{"id": 1}', b"\xff", b'{"id":"x","region":"eu",'):
        assert NodeInfo.decode(junk) is None


def test_region_map_longest_prefix_and_address_forms(tmp_path: Path) -> None:
    path = tmp_path / "regions"
    path.write_text("10.0.0.0/8 us  # wide\n10.1.0.0/16 eu\n\n2001:db8::/32 ap\n")
    regions = RegionMap.load(path)
    assert regions.lookup(parse_ip("10.1.2.3")) == "eu"  # type: ignore[arg-type]
    assert regions.lookup(parse_ip("10.2.0.1")) == "us"  # type: ignore[arg-type]
    assert regions.lookup(parse_ip("::ffff:10.1.0.1")) == "eu"  # type: ignore[arg-type]
    assert regions.lookup(parse_ip("2001:db8:5::1")) == "ap"  # type: ignore[arg-type]
    geo = write_mmdb(tmp_path / "g.mmdb", {"2001:db8:9::/48": {"region": "moon"}})
    resolver = RegionResolver.from_files(path, geo)
    assert resolver.region_of("2001:db8:9::1", lambda r: False) == "ap"  # the map first
    assert resolver.region_of("garbage", lambda r: True) is None


def test_a_missing_or_foreign_geoip_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RegionFileError, match=f"GeoIP database {tmp_path}/absent.mmdb: no such"):
        GeoIp(tmp_path / "absent.mmdb")
    foreign = tmp_path / "regions.txt"
    foreign.write_text("10.0.0.0/8 eu\n")
    with pytest.raises(RegionFileError, match="not a MaxMind database"):
        GeoIp(foreign)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.0/8 eu\n10.0.0/33 us\n", "line 2: '10.0.0/33' is not a CIDR network"),
        ("# header\n10.0.0.0/8\n", "line 2: expected 'CIDR REGION'"),
        ("10.0.0.0/8 eu extra\n", "line 1: expected 'CIDR REGION'"),
    ],
)
def test_region_map_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "regions"
    path.write_text(text)
    with pytest.raises(RegionFileError, match=message) as caught:
        RegionMap.load(path)
    assert str(path) in str(caught.value)


def test_serve_refuses_a_bad_region_file_in_one_line(tmp_path: Path) -> None:
    bad_map = tmp_path / "regions"
    bad_map.write_text("198.51.100.0/24 eu\nnot-a-network us\n")
    not_mmdb = tmp_path / "geo.mmdb"
    not_mmdb.write_bytes(b"this is no MaxMind database" * 10)
    for flag, path, words in (
        ("--region-map", bad_map, "line 2"),
        ("--geoip", not_mmdb, "not a MaxMind database"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "iceward", "serve", "--listen", "127.0.0.1", "--port", "0",
             "--tls-port", "0", "--http", "off", "--data-dir", str(tmp_path / "data"),
             "--cluster", "redis://127.0.0.1:9/0", flag, str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and str(path) in errors[0] and words in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://:hunter2-secret@127.0.0.1:abc/0", "Port could not be cast"),
        ("redis://:hunter2-secret@127.0.0.1:6379/zero", "database 'zero' is not a number"),
        ("http://:hunter2-secret@127.0.0.1/", "must be a Redis URL"),
    ],
)
def test_a_cluster_url_redis_cannot_read_is_named_without_its_password(
    tmp_path: Path, url: str, words: str
) -> None:
    with pytest.raises(SettingsError, match=words) as caught:
        load_settings(cluster=url, data_dir=tmp_path)
    assert str(caught.value).startswith("cluster: ") and "hunter2" not in str(caught.value)
