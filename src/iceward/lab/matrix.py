"""The lab matrix: network pairs (rows) x ICE configurations (columns), one topology per cell.

Each cell builds its own namespaces (run-specific prefix), starts the STUN/TURN server in the
internet namespace, runs two aioice agents in the LAN namespaces with signalling relayed by this
process over their stdin/stdout, records the outcome, runs ``iceward doctor`` from inside the first
LAN when the cell failed, and tears everything down.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from iceward.lab.ca import SERVER_NAME, LabCA, make_lab_ca
from iceward.lab.topology import (
    ALT_SERVER_IP,
    APDM,
    EIM,
    PROFILES,
    SERVER_IP,
    SIGNAL_IP,
    Netem,
    Profile,
    Topology,
    install_cleanup,
    new_run_id,
)
from iceward.turn.credentials import mint_rest_credential

SECRET = "iceward-lab-secret"
REALM = "lab.iceward.test"
RELAY_PORTS = (50000, 50999)
TLS_PORT = 443

#: Columns: the ICE configuration each agent is given.
CONFIGS: dict[str, str] = {
    "none": "no ICE servers (host candidates only)",
    "stun": "STUN only",
    "turn-udp": "STUN + TURN over UDP",
    "turn-all": "STUN + TURN over UDP, TCP and TLS on 443",
    "relay-only": "TURN UDP+TCP+TLS 443, iceTransportPolicy relay",
}

#: Rows of a full run: "SITE_A/SITE_B" profile pairs.
FULL_ROWS = [
    "none/symmetric",
    "full-cone/full-cone",
    "full-cone/symmetric",
    "restricted/restricted",
    "restricted/symmetric",
    "symmetric/symmetric",
    "cgnat/restricted",
    "cgnat/cgnat",
    "cgnat-symmetric/restricted",
    "firewall/restricted",
    "firewall/firewall",
]


def ice_config(
    column: str, credential: tuple[str, str], host: str = SERVER_IP
) -> list[dict[str, Any]]:
    """The iceServers array for a column (REST credential for TURN). For browsers, ``host`` is
    the server's name for the TCP and TLS URLs (their host resolver rules map it; the certificate
    names it); UDP URLs always carry the IP (Chromium resolves those outside the rules)."""
    stun = {"urls": [f"stun:{SERVER_IP}:3478"]}
    username, password = credential
    udp = f"turn:{SERVER_IP}:3478?transport=udp"
    tcp = f"turn:{host}:3478?transport=tcp"
    tls = f"turns:{host}:{TLS_PORT}?transport=tcp"
    if column == "none":
        return []
    if column == "stun":
        return [stun]
    if column == "turn-udp":
        return [stun, {"urls": [udp], "username": username, "credential": password}]
    if column in ("turn-all", "relay-only"):
        turn = {"urls": [udp, tcp, tls], "username": username, "credential": password}
        return [turn] if column == "relay-only" else [stun, turn]
    raise ValueError(f"unknown ICE configuration {column!r} (choose from {', '.join(CONFIGS)})")


def parse_row(row: str) -> tuple[Profile, Profile]:
    names = row.split("/")
    if len(names) != 2 or any(n not in PROFILES for n in names):
        raise ValueError(
            f"bad row {row!r}: want SITE_A/SITE_B with profiles from {', '.join(PROFILES)}"
        )
    return PROFILES[names[0]], PROFILES[names[1]]


# -- ground truth --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    connected: bool
    relay: bool | None = None  # None: either is fine
    #: Relay protocol the first site must use (the firewall's TLS on 443), or None.
    a_relay_protocol: str | None = None
    #: The cause a diagnosis must name when the cell fails (a findings code).
    cause: str | None = None


def _public(p: Profile) -> bool:
    return not p.layers


def direct_possible(a: Profile, b: Profile) -> bool:
    """Can two agents hole-punch with server-reflexive candidates (both send checks)?"""
    if a.firewall or b.firewall:
        return False
    if a.mapping == EIM and b.mapping == EIM:
        return True
    if a.mapping == APDM and b.mapping == APDM:
        return False
    other = b if a.mapping == APDM else a
    return other.filtering == EIM


def host_possible(a: Profile, b: Profile) -> bool:
    """Host candidates only: one side must be on a public address, the other can reach it."""
    if a.firewall or b.firewall:
        return False
    return _public(a) or _public(b)


def expected(a: Profile, b: Profile, column: str) -> Expected:
    firewall = a.firewall or b.firewall
    direct = direct_possible(a, b)
    if column == "none":
        ok = host_possible(a, b)
        return Expected(ok, False if ok else None, cause=None if ok else "no-turn")
    if column == "stun":
        ok = direct or host_possible(a, b)
        symmetric = APDM in (a.mapping, b.mapping)
        cause = "symmetric-nat-no-turn" if symmetric and not firewall else "no-turn"
        return Expected(ok, False if ok else None, cause=None if ok else cause)
    if column == "turn-udp":
        if firewall:
            return Expected(False, cause="turn-udp-only")
        return Expected(True, relay=not direct)
    if column == "turn-all":
        return Expected(True, relay=not direct, a_relay_protocol="tls" if a.firewall else None)
    if column == "relay-only":
        return Expected(True, relay=True, a_relay_protocol="tls" if a.firewall else "udp")
    raise ValueError(column)


# -- running a cell ------------------------------------------------------------------------------


@dataclass
class CellResult:
    row: str
    column: str
    connected: bool
    expected: dict[str, Any]
    ok: bool
    pair: str = ""  # "srflx/relay(tls)": site A's candidate type / site B's
    relay: bool = False
    relay_protocols: list[str] = field(default_factory=list)  # per site, "" when not relayed
    first_valid_ms: int | None = None
    connect_ms: int | None = None
    duration_s: float = 0.0
    error: str = ""
    doctor_cause: str | None = None
    doctor_errors: list[str] = field(default_factory=list)  # site A's, then site B's
    nat: list[dict[str, Any] | None] = field(default_factory=list)  # per site, doctor --nat
    cause_ok: bool | None = None
    #: --browser: the first error ``iceward analyze`` names from each side's webrtc-internals dump.
    analyze_cause: str | None = None
    analyze_errors: list[str] = field(default_factory=list)
    analyze_ok: bool | None = None
    agent: str = "aioice"
    workdir: str = ""
    agents: list[dict[str, Any]] = field(default_factory=list)

    def label(self) -> str:
        if not self.connected:
            return "✗ failed"
        return f"✓ {self.pair}"


@dataclass
class LabOptions:
    workdir: Path
    server: str = "iceward"  # or "coturn"
    deadline: float = 10.0
    doctor: bool = True
    netem: tuple[Netem, Netem] = (Netem(), Netem())
    run_id: str = field(default_factory=new_run_id)
    #: Chromium agents (Playwright) instead of aioice; signalling over HTTPS 443.
    browser: bool = False


async def _exec(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "", "timed out"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


READY_SCRIPT = """
import socket, sys, time
from iceward.stun import constants as C, encode_message
req = encode_message(C.BINDING, C.REQUEST, b"lab-ready-01", fingerprint=True)
deadline = time.time() + 20
while time.time() < deadline:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(req, (sys.argv[1], 3478)); s.recvfrom(2048); sys.exit(0)
        except OSError:
            time.sleep(0.1)
sys.exit(1)
"""


def server_argv(kind: str, workdir: Path, ca: LabCA) -> list[str]:
    low, high = RELAY_PORTS
    if kind == "coturn":
        return [
            # Two listening IPs: coturn then does RFC 5780 (alternate port 3479).
            "turnserver", "-n", f"--listening-ip={SERVER_IP}", f"--listening-ip={ALT_SERVER_IP}",
            f"--relay-ip={SERVER_IP}",
            "--listening-port=3478", f"--tls-listening-port={TLS_PORT}",
            f"--cert={ca.cert}", f"--pkey={ca.key}", f"--min-port={low}", f"--max-port={high}",
            f"--realm={REALM}", "--use-auth-secret", f"--static-auth-secret={SECRET}",
            "--no-dtls", "--no-cli", f"--pidfile={workdir / 'turnserver.pid'}",
            f"--userdb={workdir / 'turndb'}", f"--log-file={workdir / 'server.log'}",
            "--simple-log", "--no-stdout-log", "--verbose",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "iceward", "serve", "--listen", SERVER_IP, "--port", "3478",
        "--tls-port", str(TLS_PORT), "--cert", str(ca.cert), "--key", str(ca.key),
        "--relay-ip", SERVER_IP, "--relay-ports", f"{low}-{high}", "--secret", SECRET,
        "--realm", REALM, "--http", "off", "--data-dir", str(workdir / "server-data"),
        "--log-level", "debug", "--alternate-address", ALT_SERVER_IP, "--workers", "1",
    ]  # fmt: skip


class Cell:
    def __init__(self, row: str, column: str, index: int, opts: LabOptions, ca: LabCA) -> None:
        self.row, self.column, self.opts, self.ca = row, column, opts, ca
        self.a, self.b = parse_row(row)
        self.expect = expected(self.a, self.b, column)
        self.dir = opts.workdir / f"{row.replace('/', '__')}__{column}"
        self.topo = Topology(f"iwl{opts.run_id}c{index}", (self.a, self.b), opts.netem)

    async def run(self) -> CellResult:
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        result = CellResult(self.row, self.column, False, asdict(self.expect), False)
        result.workdir = str(self.dir)
        result.agent = "chromium" if self.opts.browser else "aioice"
        try:
            await asyncio.to_thread(self.topo.build)
            server = await self._start_server()
            signalling = await self._start_signalling() if self.opts.browser else None
            try:
                if self.opts.browser:
                    await self._browsers(result)
                else:
                    await self._agents(result)
                if not result.connected and self.opts.doctor:
                    await self._doctor(result)
                if not result.connected and self.opts.browser:
                    await self._analyze(result)
            finally:
                await stop_server(server)
                if signalling is not None:
                    await stop_server(signalling)
        except Exception as exc:
            result.error = f"lab setup failed: {type(exc).__name__}: {exc}"
        finally:
            await asyncio.to_thread(self.topo.destroy)
        result.duration_s = round(time.monotonic() - started, 1)
        result.ok = self._judge(result)
        (self.dir / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
        return result

    def _judge(self, r: CellResult) -> bool:
        e = self.expect
        if r.connected != e.connected:
            return False
        if not r.connected:
            # A failure only counts when both agents ran and ICE itself failed (a broken lab
            # must not pass for an expected failure).
            ice_failed = ("ICE: ", "not connected within")
            return len(r.agents) == 2 and all(
                str(agent.get("error", "")).startswith(ice_failed) for agent in r.agents
            )
        if r.connected and e.relay is not None and r.relay != e.relay:
            return False
        wrong_protocol = r.relay_protocols[:1] != [e.a_relay_protocol]
        return not (r.connected and e.a_relay_protocol and wrong_protocol)

    async def _start_server(self) -> asyncio.subprocess.Process:
        return await start_server(self.topo, self.dir, self.opts.server, self.ca)

    async def _start_signalling(self) -> asyncio.subprocess.Process:
        with (self.dir / "signalling.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *self.topo.exec_prefix(self.topo.inet), sys.executable, "-m",
                "iceward.lab.signalling", "--listen", SIGNAL_IP, "--cert", str(self.ca.cert),
                "--key", str(self.ca.key), stdout=log, stderr=log,
            )  # fmt: skip
        for _ in range(100):
            if "signalling on" in (self.dir / "signalling.log").read_text(errors="replace"):
                return proc
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        raise RuntimeError("the signalling server did not start")

    async def _browsers(self, result: CellResult) -> None:
        """Two Chromiums (Playwright) in the LANs; signalling through the HTTPS mailbox."""
        config = json.dumps(self.config(SERVER_NAME))
        (self.dir / "ice-servers.json").write_text(json.dumps({"iceServers": json.loads(config)}))
        room = self.topo.prefix
        procs = []
        for site, role in zip(self.topo.sites, ("controlling", "controlled"), strict=True):
            argv = [
                *self.topo.exec_prefix(site.lan_ns), sys.executable, "-m", "iceward.lab.browser",
                "--role", role, "--room", room, "--config", config, "--ca-file",
                str(self.ca.ca_cert), "--signal-ip", SIGNAL_IP, "--turn-ip", SERVER_IP,
                "--home", str(self.dir / f"home-{site.index}"),
                "--out", str(self.dir / f"webrtc-internals-{site.index}.json.gz"),
                "--deadline", str(self.opts.deadline),
            ]  # fmt: skip
            if self.column == "relay-only":
                argv.append("--relay-only")
            with (self.dir / f"agent-{site.index}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *argv, stdout=asyncio.subprocess.PIPE, stderr=log
                    )
                )
        try:
            outs = await asyncio.wait_for(
                asyncio.gather(*(self._line(p) for p in procs)), self.opts.deadline + 60
            )
        except TimeoutError:
            result.error = "browsers did not finish in time"
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            return
        finally:
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        agents = [o.get("result", {}) for o in outs]
        result.agents = agents
        self._summarize(result, agents)
        if result.connected:
            result.first_valid_ms = agents[0].get("connect_ms")

    async def _analyze(self, result: CellResult) -> None:
        """``iceward analyze`` on each side's webrtc-internals dump; the cause it names."""
        errors: list[str] = []
        for site in self.topo.sites:
            dump = self.dir / f"webrtc-internals-{site.index}.json.gz"
            if not dump.exists():
                continue
            code, out, err = await _exec(
                sys.executable, "-m", "iceward", "analyze", str(dump), "--json", timeout=60
            )
            (self.dir / f"analyze-{site.index}.json").write_text(out or err)
            if code in (0, 1):
                report = json.loads(out)
                errors += [
                    f["code"] for f in report.get("findings", []) if f["severity"] == "error"
                ]
        result.analyze_errors = errors
        specific = "symmetric-nat-no-turn"
        result.analyze_cause = specific if specific in errors else (errors[0] if errors else None)
        if self.expect.cause:
            result.analyze_ok = result.analyze_cause == self.expect.cause

    def config(self, host: str = SERVER_IP) -> list[dict[str, Any]]:
        cred = mint_rest_credential(SECRET, "lab", 3600, time.time())
        return ice_config(self.column, (cred.username, cred.password), host)

    async def _agents(self, result: CellResult) -> None:
        config = json.dumps(self.config())
        (self.dir / "ice-servers.json").write_text(json.dumps({"iceServers": json.loads(config)}))
        procs = []
        for site, role in zip(self.topo.sites, ("controlling", "controlled"), strict=True):
            argv = [
                *self.topo.exec_prefix(site.lan_ns), sys.executable, "-m", "iceward.lab.agent",
                "--role", role, "--config", config, "--ca-file", str(self.ca.ca_cert),
                "--deadline", str(self.opts.deadline),
            ]  # fmt: skip
            if self.column == "relay-only":
                argv.append("--relay-only")
            with (self.dir / f"agent-{site.index}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=log,
                    )
                )
        bound = self.opts.deadline + 30
        try:
            offers = await asyncio.wait_for(asyncio.gather(*(self._line(p) for p in procs)), bound)
            for proc, offer in zip(procs, reversed(offers), strict=True):
                assert proc.stdin is not None
                proc.stdin.write((json.dumps(offer) + "\n").encode())
                await proc.stdin.drain()
            outs = await asyncio.wait_for(asyncio.gather(*(self._line(p) for p in procs)), bound)
        except TimeoutError:
            result.error = "agents did not finish in time"
            return
        finally:
            for proc in procs:
                if proc.returncode is None:
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        agents = [o.get("result", {}) for o in outs]
        for offer, agent in zip(offers, agents, strict=True):
            agent.setdefault("candidates", offer.get("candidates", []))
        result.agents = agents
        self._summarize(result, agents)

    async def _line(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return {"result": {"connected": False, "error": "agent exited"}}
            try:
                value: dict[str, Any] = json.loads(line)
                return value
            except ValueError:
                continue

    def _summarize(self, result: CellResult, agents: list[dict[str, Any]]) -> None:
        a, b = agents
        result.connected = bool(a.get("connected") and b.get("connected"))
        errors = [x.get("error", "") for x in agents if x.get("error")]
        result.error = "; ".join(errors)
        result.first_valid_ms = a.get("first_valid_ms")
        result.connect_ms = a.get("connect_ms")
        if not result.connected:
            return
        parts, protocols = [], []
        for me, peer in ((a, b), (b, a)):
            kind, proto = side_of_pair(me, peer)
            protocols.append(proto)
            parts.append(f"{kind}({proto})" if proto else kind)
        result.pair = "/".join(parts)
        result.relay = any(protocols)
        result.relay_protocols = protocols

    async def _doctor(self, result: CellResult) -> None:
        """``iceward doctor --nat`` inside both LANs. The cause found: symmetric-nat-no-turn when
        either side names it (the more specific cause), else site A's first error."""
        config = json.dumps({"iceServers": self.config()})
        reports = await asyncio.gather(
            *(
                run_doctor(
                    self.topo, s.lan_ns, config, self.ca, self.dir / f"doctor-{s.index}.json"
                )
                for s in self.topo.sites
            )
        )
        errors: list[list[str]] = []
        for report in reports:
            if report is None:
                errors.append([])
                result.nat.append(None)
                continue
            errors.append(
                [f["code"] for f in report.get("findings", []) if f["severity"] == "error"]
            )
            result.nat.append(report.get("nat"))
        result.doctor_errors = [code for site in errors for code in site]
        if "symmetric-nat-no-turn" in result.doctor_errors:
            result.doctor_cause = "symmetric-nat-no-turn"
        elif reports[0] is None:
            result.doctor_cause = "doctor failed"
        else:
            result.doctor_cause = errors[0][0] if errors[0] else None
        if self.expect.cause:
            result.cause_ok = result.doctor_cause == self.expect.cause


def side_of_pair(me: dict[str, Any], peer: dict[str, Any]) -> tuple[str, str]:
    """``(candidate type, relay protocol or "")`` of one site in the selected pair.

    The type is the one the peer sees (srflx/prflx: the local end of a srflx path is the host
    candidate); a site is relayed when its own selected candidate is a relay, or when the peer's
    selected pair ends on one of its relays (Chromium's two ends may report different pairs, and a
    local candidate learned from a check response shows up as prflx). The protocol comes from the
    site's own relay candidate ("?" when unknown)."""
    own = me.get("local") or {}
    seen = peer.get("remote") or {}
    if own.get("type") == "relay":
        return "relay", str(own.get("relay_protocol") or "?")
    if seen.get("type") == "relay":
        address = seen.get("address", "")
        for line in me.get("candidates", []):
            if line.startswith(f"{address} typ relay relay "):
                return "relay", line.rsplit(" ", 1)[1]
        return "relay", "?"
    return str(seen.get("type") or own.get("type") or "?"), ""


async def start_server(
    topo: Topology, workdir: Path, kind: str, ca: LabCA
) -> asyncio.subprocess.Process:
    """The STUN/TURN server in the internet namespace, once it answers STUN."""
    argv = server_argv(kind, workdir, ca)
    log = (workdir / ("server.out" if kind == "coturn" else "server.log")).open("wb")
    proc = await asyncio.create_subprocess_exec(
        *topo.exec_prefix(topo.inet), *argv, stdout=log, stderr=log
    )
    log.close()
    code, _, err = await _exec(
        *topo.exec_prefix(topo.inet), sys.executable, "-c", READY_SCRIPT, SERVER_IP
    )
    if code != 0 or proc.returncode is not None:
        raise RuntimeError(f"the {kind} server did not answer STUN: {err[-500:]}")
    return proc


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_doctor(
    topo: Topology, ns: str, config: str, ca: LabCA, save: Path, *extra: str
) -> dict[str, Any] | None:
    """``iceward doctor --nat --json`` inside ``ns``; its JSON report (saved) or None."""
    code, out, err = await _exec(
        *topo.exec_prefix(ns), sys.executable, "-m", "iceward", "doctor", "--ice-servers",
        config, "--ca-file", str(ca.ca_cert), "--timeout", "2", "--nat", "--json", *extra,
        timeout=90,
    )  # fmt: skip
    save.write_text(out or err)
    if code not in (0, 1):
        return None
    report: dict[str, Any] = json.loads(out)
    return report


async def run_matrix(
    rows: list[str],
    columns: list[str],
    opts: LabOptions,
    parallel: int = 4,
    on_result: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    """Run every cell (at most ``parallel`` at once); results in row-major order."""
    install_cleanup()
    for row in rows:
        parse_row(row)
    for column in columns:
        if column not in CONFIGS:
            raise ValueError(f"unknown column {column!r} (choose from {', '.join(CONFIGS)})")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    ca = make_lab_ca(opts.workdir / "ca")
    cells = [
        Cell(row, column, i, opts, ca)
        for i, (row, column) in enumerate((r, c) for r in rows for c in columns)
    ]
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(cell: Cell) -> CellResult:
        async with gate:
            res = await cell.run()
        if on_result is not None:
            on_result(res)
        return res

    return list(await asyncio.gather(*(one(c) for c in cells)))


# -- RFC 5780 classification per profile ----------------------------------------------------------


@dataclass
class NatResult:
    profile: str
    expected_mapping: str
    expected_filtering: str
    mapping: str = "unknown"
    filtering: str = "unknown"
    ok: bool = False
    notes: list[str] = field(default_factory=list)
    workdir: str = ""


def expected_nat(profile: Profile) -> tuple[str, str]:
    if profile.firewall:
        return "blocked", "blocked"
    return profile.mapping, profile.filtering


async def run_nat_checks(
    profiles: list[str], opts: LabOptions, parallel: int = 4
) -> list[NatResult]:
    """``iceward doctor --nat`` behind each profile against ``iceward serve --alternate-address``;
    the classification compared with what the profile's iptables rules implement."""
    install_cleanup()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    ca = make_lab_ca(opts.workdir / "ca")
    gate = asyncio.Semaphore(max(1, parallel))
    config = json.dumps({"iceServers": [{"urls": [f"stun:{SERVER_IP}:3478"]}]})

    async def one(index: int, name: str) -> NatResult:
        profile = PROFILES[name]
        mapping, filtering = expected_nat(profile)
        result = NatResult(name, mapping, filtering)
        workdir = opts.workdir / f"nat-{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        result.workdir = str(workdir)
        topo = Topology(f"iwl{opts.run_id}n{index}", (profile, PROFILES["none"]))
        async with gate:
            try:
                await asyncio.to_thread(topo.build)
                server = await start_server(topo, workdir, "iceward", ca)
                try:
                    report = await run_doctor(
                        topo, topo.sites[0].lan_ns, config, ca, workdir / "doctor.json"
                    )
                finally:
                    await stop_server(server)
                nat = (report or {}).get("nat") or {}
                result.mapping = nat.get("mapping", "unknown")
                result.filtering = nat.get("filtering", "unknown")
                result.notes = list(nat.get("notes", []))
            except Exception as exc:
                result.notes.append(f"{type(exc).__name__}: {exc}")
            finally:
                await asyncio.to_thread(topo.destroy)
        result.ok = (result.mapping, result.filtering) == (mapping, filtering)
        return result

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(profiles))))
