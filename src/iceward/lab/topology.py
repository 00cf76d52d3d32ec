"""Lab topology: network namespaces, veths, a bridge and NAT routers built with iproute2/iptables.

One cell = one "internet" namespace (a bridge, the STUN/TURN server, a default route to a dead next
hop) and two sites. A site is a LAN namespace holding the agent, behind a NAT router namespace,
optionally behind a carrier NAT namespace (double NAT); the ``none`` profile puts the agent straight
on the bridge. Only documentation ranges are used and nothing is routed to the host: namespaces are
connected to each other only, and forwarding is enabled only in router namespaces.

Everything created is recorded in a process-wide registry and removed by :func:`cleanup_all`, which
runs at exit and on SIGTERM/SIGINT/SIGHUP (see :func:`install_cleanup`).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

#: Internet (bridge) subnet, the server and its alternate address, the bridge's own address.
INET_NET = "203.0.113.0/24"
INET_GW = "203.0.113.1"
SERVER_IP = "203.0.113.10"
ALT_SERVER_IP = "203.0.113.11"
#: The signalling server for browser agents (HTTPS on 443).
SIGNAL_IP = "203.0.113.12"
#: The dead next hop of the internet namespace's default route (a fixed fake neighbour).
DEAD_HOP = "198.51.100.254"
DEAD_MAC = "02:00:5e:00:53:fe"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


@dataclass(frozen=True)
class Profile:
    """A site's network: NAT layers, outermost (carrier) first, and whether UDP is blocked."""

    name: str
    title: str
    layers: tuple[str, ...]  # each "restricted" | "symmetric" | "full-cone"; () = public
    firewall: bool = False
    #: RFC 4787 behaviour of the whole path, for expectations: mapping, filtering.
    mapping: str = "endpoint-independent"
    filtering: str = "endpoint-independent"


EIM, ADM, APDM = (
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("none", "public address, no NAT", (), mapping=EIM, filtering=EIM),
        Profile("full-cone", "full-cone NAT (EIM, EIF)", ("full-cone",), filtering=EIM),
        Profile("restricted", "port-restricted NAT (EIM, APDF)", ("restricted",), filtering=APDM),
        Profile("symmetric", "symmetric NAT (APDM, APDF)", ("symmetric",), mapping=APDM,
                filtering=APDM),
        Profile("cgnat", "carrier NAT + home NAT (restricted, restricted)",
                ("restricted", "restricted"), filtering=APDM),
        Profile("cgnat-symmetric", "symmetric carrier NAT + home NAT",
                ("symmetric", "restricted"), mapping=APDM, filtering=APDM),
        Profile("firewall", "NAT + firewall: outbound TCP 443 only, UDP dropped",
                ("restricted",), firewall=True, filtering=APDM),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Netem:
    """tc netem on a site's WAN link."""

    delay_ms: int = 0
    loss_pct: float = 0.0

    @property
    def active(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0


class LabError(RuntimeError):
    """A lab command failed (its stderr is in the message)."""


# -- process-wide registry and cleanup -----------------------------------------------------------

_lock = threading.Lock()
_namespaces: set[str] = set()
_processes: dict[int, subprocess.Popen[bytes]] = {}
_installed = False


def register_process(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _processes[proc.pid] = proc


def forget_process(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _processes.pop(proc.pid, None)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate one process we started (by its id), kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    forget_process(proc)


def delete_namespace(name: str) -> None:
    """Kill what still runs in ``name`` (only our own namespaces) and delete it."""
    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    with _lock:
        _namespaces.discard(name)


def cleanup_all() -> None:
    """Stop every registered process and delete every registered namespace."""
    with _lock:
        procs = list(_processes.values())
        names = sorted(_namespaces)
    for proc in procs:
        try:
            stop_process(proc, grace=2.0)
        except OSError:
            pass
    for name in names:
        delete_namespace(name)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    cleanup_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """atexit + SIGTERM/SIGHUP handlers (SIGINT raises KeyboardInterrupt, caught by callers)."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]


def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError("iceward lab needs root (network namespaces, iptables): run it with sudo")
    for tool in ("ip", "iptables", "tc"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            raise LabError(f"iceward lab needs `{tool}` (iproute2/iptables)")


# -- building ------------------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")


@dataclass
class Site:
    index: int  # 1 or 2
    profile: Profile
    lan_ns: str = ""
    router_ns: str = ""  # the innermost NAT (the home router), "" for public
    carrier_ns: str = ""
    host_ip: str = ""


@dataclass
class Topology:
    """One cell's network. ``build()`` creates it, ``destroy()`` removes it (idempotent)."""

    prefix: str
    profiles: tuple[Profile, Profile]
    netem: tuple[Netem, Netem] = (Netem(), Netem())
    sites: list[Site] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def inet(self) -> str:
        return f"{self.prefix}-inet"

    def ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        _run(["ip", "netns", "add", name])
        with _lock:
            _namespaces.add(name)
        self.namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def in_ns(self, ns: str, *argv: str) -> None:
        _run([*self.exec_prefix(ns), *argv])

    def build(self) -> None:
        try:
            self._build_inet()
            for index, profile in enumerate(self.profiles, start=1):
                self.sites.append(self._build_site(index, profile, self.netem[index - 1]))
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        for name in reversed(self.namespaces):
            delete_namespace(name)
        self.namespaces.clear()

    def _build_inet(self) -> None:
        inet = self.ns("inet")
        ip = ["ip", "-n", inet]
        _run([*ip, "link", "add", "br0", "type", "bridge"])
        _run([*ip, "link", "set", "br0", "up"])
        for addr in (INET_GW, SERVER_IP, ALT_SERVER_IP, SIGNAL_IP):
            _run([*ip, "addr", "add", f"{addr}/24", "dev", "br0"])
        # The dead next hop: a veth whose far end swallows everything, and a fixed neighbour,
        # so sends to unroutable candidates vanish instead of failing with "network unreachable".
        _run([*ip, "link", "add", "dead0", "type", "veth", "peer", "name", "dead1"])
        _run([*ip, "link", "set", "dead0", "up"])
        _run([*ip, "link", "set", "dead1", "up"])
        _run([*ip, "neigh", "replace", DEAD_HOP, "lladdr", DEAD_MAC, "dev", "dead0",
              "nud", "permanent"])  # fmt: skip
        _run([*ip, "route", "add", "default", "via", DEAD_HOP, "dev", "dead0", "onlink"])

    def _unreachable_private(self, ns: str) -> None:
        for net in PRIVATE_RANGES:
            _run(["ip", "-n", ns, "route", "add", "unreachable", net])

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        _run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
              "netns", ns_b])  # fmt: skip
        _run(["ip", "-n", ns_a, "link", "set", name_a, "up"])
        _run(["ip", "-n", ns_b, "link", "set", name_b, "up"])

    def _bridge_port(self, ns: str, port: str, inner: str, address: str) -> None:
        """Connect ``ns`` to the internet bridge: ``inner`` gets ``address``/24."""
        self._veth(self.inet, port, ns, inner)
        _run(["ip", "-n", self.inet, "link", "set", port, "master", "br0"])
        _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inner])
        _run(["ip", "-n", ns, "route", "add", "default", "via", INET_GW])

    def _build_site(self, index: int, profile: Profile, netem: Netem) -> Site:
        site = Site(index, profile)
        lan = self.ns(f"lan{index}")
        site.lan_ns = lan
        self._unreachable_private(lan)
        if not profile.layers:
            site.host_ip = f"203.0.113.{100 + index}"
            self._bridge_port(lan, f"h{index}", "eth0", site.host_ip)
            self._netem(lan, "eth0", netem)
            return site
        # Outermost layer first: it sits on the bridge.
        layers = list(profile.layers)
        outer_wan_ip = f"203.0.113.{20 + index}"
        upstream_ns = ""
        if len(layers) == 2:
            carrier = self.ns(f"c{index}")
            site.carrier_ns = carrier
            self._unreachable_private(carrier)
            self._bridge_port(carrier, f"s{index}", "wan", outer_wan_ip)
            upstream_ns = carrier
        router = self.ns(f"r{index}")
        site.router_ns = router
        self._unreachable_private(router)
        if upstream_ns:
            base = 4 * (index - 1)
            inside, outside = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
            self._veth(upstream_ns, "lan", router, "wan")
            _run(["ip", "-n", upstream_ns, "addr", "add", f"{inside}/30", "dev", "lan"])
            _run(["ip", "-n", router, "addr", "add", f"{outside}/30", "dev", "wan"])
            _run(["ip", "-n", router, "route", "add", "default", "via", inside])
        else:
            self._bridge_port(router, f"s{index}", "wan", outer_wan_ip)
        base = 64 * (index - 1)
        gw, site.host_ip = f"192.0.2.{base + 1}", f"192.0.2.{base + 10}"
        self._veth(router, "lan", lan, "eth0")
        _run(["ip", "-n", router, "addr", "add", f"{gw}/26", "dev", "lan"])
        _run(["ip", "-n", lan, "addr", "add", f"{site.host_ip}/26", "dev", "eth0"])
        _run(["ip", "-n", lan, "route", "add", "default", "via", gw])
        # NAT rules: the home router gets the innermost layer, the carrier the outer one.
        self._nat(router, layers[-1], site.host_ip, profile.firewall)
        if upstream_ns:
            self._nat(upstream_ns, layers[0], "", False)
        self._netem(upstream_ns or router, "wan", netem)
        return site

    def _netem(self, ns: str, dev: str, netem: Netem) -> None:
        if not netem.active:
            return
        argv = ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem"]
        if netem.delay_ms:
            argv += ["delay", f"{netem.delay_ms}ms"]
        if netem.loss_pct:
            argv += ["loss", f"{netem.loss_pct}%"]
        _run(argv)

    def _nat(self, ns: str, kind: str, lan_host: str, firewall: bool) -> None:
        """A NAT router: forwarding on, MASQUERADE on ``wan``, unsolicited WAN packets dropped
        silently (policy DROP, no REJECT, so no ICMP)."""
        self.in_ns(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        ipt = [*self.exec_prefix(ns), "iptables", "-w"]
        masq = [*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        if kind == "symmetric":
            masq.append("--random-fully")
        _run(masq)
        _run([*ipt, "-P", "FORWARD", "DROP"])
        _run([*ipt, "-P", "INPUT", "DROP"])
        _run([*ipt, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        _run([*ipt, "-A", "INPUT", "-i", "lan", "-j", "ACCEPT"])
        established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
        _run([*ipt, "-A", "INPUT", *established])
        _run([*ipt, "-A", "FORWARD", *established])
        if firewall:
            _run([*ipt, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "tcp", "--dport", "443",
                  "-j", "ACCEPT"])  # fmt: skip
        else:
            _run([*ipt, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"])
        if kind == "full-cone" and lan_host:
            # Linux has no full-cone NAT: emulate endpoint-independent filtering by forwarding
            # every inbound UDP packet to the single LAN host (MASQUERADE keeps source ports).
            _run([*ipt, "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "-j", "DNAT",
                  "--to-destination", lan_host])  # fmt: skip
            _run([*ipt, "-A", "FORWARD", "-i", "wan", "-o", "lan", "-p", "udp", "-d", lan_host,
                  "-j", "ACCEPT"])  # fmt: skip
