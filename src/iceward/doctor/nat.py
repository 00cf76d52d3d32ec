"""RFC 5780 NAT behaviour discovery: mapping and filtering of the NAT in front of this host.

Needs a STUN server with two addresses (``iceward serve --alternate-address``): its Binding
responses carry OTHER-ADDRESS, and it honours CHANGE-REQUEST. Mapping (RFC 5780 4.3) is probed
from one socket towards the primary address, the alternate IP and the alternate IP and port;
filtering (4.4) from a fresh socket, asking the server to answer from the other IP and port, then
from the other port only. Every request is retransmitted (RFC 8489 RTO doubling) within the
timeout, a response counts only with the request's transaction id, and the source of every
response must equal its RESPONSE-ORIGIN (and differ from where a CHANGE-REQUEST was sent).
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.message import StunError, encode_message, parse_message

Address = tuple[str, int]

EIM = "endpoint-independent"
ADM = "address-dependent"
APDM = "address-and-port-dependent"
UNKNOWN = "unknown"
CHANGE_IP, CHANGE_PORT = 0x4, 0x2


@dataclass
class Answer:
    mapped: Address
    source: Address
    other: Address | None
    origin: Address | None
    rtt_ms: float
    sent: int


@dataclass
class NatReport:
    server: Address
    local: Address | None = None
    mapped: Address | None = None
    other: Address | None = None
    behind_nat: bool | None = None
    mapping: str = UNKNOWN
    filtering: str = UNKNOWN
    tests: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def symmetric(self) -> bool:
        return self.mapping in (ADM, APDM)

    def as_dict(self) -> dict[str, Any]:
        def addr(a: Address | None) -> str | None:
            return None if a is None else f"{a[0]}:{a[1]}"

        return {
            "server": addr(self.server),
            "local": addr(self.local),
            "mapped": addr(self.mapped),
            "other_address": addr(self.other),
            "behind_nat": self.behind_nat,
            "mapping": self.mapping,
            "filtering": self.filtering,
            "tests": self.tests,
            "notes": self.notes,
        }


class Prober:
    """One UDP socket; Binding transactions with retransmission and response checks."""

    def __init__(self, timeout: float, family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def local(self, toward: Address) -> Address:
        """The local address used toward ``toward`` (connect a throwaway socket to learn it)."""
        with socket.socket(self.sock.family, socket.SOCK_DGRAM) as probe:
            probe.connect(toward)
            ip = probe.getsockname()[0]
        return str(ip), int(self.sock.getsockname()[1])

    def binding(self, dest: Address, change: int = 0) -> tuple[Answer | None, str]:
        """``(answer, "")`` or ``(None, why)``; retransmits at 100 ms, 200 ms, ... until timeout."""
        txid = os.urandom(12)
        attrs = [(C.CHANGE_REQUEST, A.encode_u32(change))] if change else []
        request = encode_message(C.BINDING, C.REQUEST, txid, attrs, fingerprint=True)
        start = time.monotonic()
        deadline = start + self.timeout
        rto, next_send, sent = 0.1, start, 0
        problem = ""
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None, problem or f"no response in {self.timeout:g} s ({sent} sent)"
            if now >= next_send:
                self.sock.sendto(request, dest)
                sent += 1
                next_send = now + rto
                rto *= 2
            wait = max(0.0, min(next_send, deadline) - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                continue
            try:
                data, source = self.sock.recvfrom(2048)
            except OSError as exc:  # e.g. ICMP port unreachable on a connected path
                problem = f"socket error: {exc}"
                continue
            try:
                msg = parse_message(data)
            except StunError:
                continue
            if msg.transaction_id != txid or msg.method != C.BINDING:
                continue  # a late answer to an earlier transaction
            if msg.cls != C.SUCCESS:
                err = msg.get(C.ERROR_CODE)
                code = A.decode_error_code(err)[0] if err else 0
                return None, f"error response {code}"
            xor = msg.get(C.XOR_MAPPED_ADDRESS)
            if xor is None:
                return None, "no XOR-MAPPED-ADDRESS"
            other = msg.get(C.OTHER_ADDRESS)
            origin = msg.get(C.RESPONSE_ORIGIN)
            src = (str(source[0]), int(source[1]))
            return Answer(
                A.decode_xor_address(xor, txid),
                src,
                A.decode_address(other) if other else None,
                A.decode_address(origin) if origin else None,
                round((time.monotonic() - start) * 1000, 1),
                sent,
            ), ""


def _record(
    report: NatReport, name: str, dest: Address, change: int, result: tuple[Answer | None, str]
) -> Answer | None:
    answer, why = result
    entry: dict[str, Any] = {"test": name, "to": f"{dest[0]}:{dest[1]}", "change": change}
    if answer is None:
        entry.update(answered=False, why=why)
    else:
        entry.update(
            answered=True,
            mapped=f"{answer.mapped[0]}:{answer.mapped[1]}",
            source=f"{answer.source[0]}:{answer.source[1]}",
            rtt_ms=answer.rtt_ms,
            sent=answer.sent,
        )
        if answer.origin is not None and answer.origin != answer.source:
            report.notes.append(
                f"{name}: RESPONSE-ORIGIN {answer.origin} differs from the packet's source "
                f"{answer.source} (a NAT or proxy rewrote it)"
            )
    report.tests.append(entry)
    return answer


def discover(server: Address, timeout: float = 2.0) -> NatReport:
    """Classify mapping and filtering toward ``server`` (an IP address and port)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    report = NatReport(server)
    mapper = Prober(timeout, family)
    try:
        report.local = mapper.local(server)
        first = _record(report, "mapping I", server, 0, mapper.binding(server))
        if first is None:
            report.notes.append("the STUN server did not answer over UDP: UDP is blocked")
            report.mapping = report.filtering = "blocked"
            return report
        report.mapped = first.mapped
        report.other = first.other
        report.behind_nat = first.mapped != report.local
        if first.other is None:
            report.notes.append(
                "the server does not support RFC 5780 (no OTHER-ADDRESS): run iceward serve "
                "with --alternate-address"
            )
            return report
        alt_ip, alt_port = first.other
        if not report.behind_nat:
            report.mapping = EIM
        else:
            dest2 = (alt_ip, server[1])
            second = _record(report, "mapping II", dest2, 0, mapper.binding(dest2))
            if second is None:
                report.notes.append("no answer from the alternate IP: mapping unknown")
            elif second.mapped == first.mapped:
                report.mapping = EIM
            else:
                dest3 = (alt_ip, alt_port)
                third = _record(report, "mapping III", dest3, 0, mapper.binding(dest3))
                if third is None:
                    report.notes.append("no answer from the alternate port: mapping unknown")
                else:
                    report.mapping = ADM if third.mapped == second.mapped else APDM
    finally:
        mapper.close()

    filt = Prober(timeout, family)
    try:
        base = _record(report, "filtering I", server, 0, filt.binding(server))
        if base is None:
            report.notes.append("no answer on the filtering socket: filtering unknown")
            return report
        both = _record(
            report, "filtering II", server, CHANGE_IP | CHANGE_PORT,
            filt.binding(server, CHANGE_IP | CHANGE_PORT),
        )  # fmt: skip
        if both is not None and both.source == server:
            report.notes.append("the server ignored CHANGE-REQUEST: filtering unknown")
            return report
        if both is not None:
            report.filtering = EIM
            return report
        port_only = _record(
            report, "filtering III", server, CHANGE_PORT, filt.binding(server, CHANGE_PORT)
        )
        if port_only is not None and port_only.source == server:
            report.notes.append("the server ignored CHANGE-REQUEST: filtering unknown")
        elif port_only is not None:
            report.filtering = ADM
        else:
            report.filtering = APDM
    finally:
        filt.close()
    return report


def target(urls: list[Any]) -> Address | None:
    """The first UDP STUN/TURN URL of a parsed config, resolved: where to run discovery."""
    for url in urls:
        if url.scheme in ("stun", "turn") and url.transport == "udp":
            try:
                info = socket.getaddrinfo(url.host.strip("[]"), url.port, type=socket.SOCK_DGRAM)
            except OSError:
                continue
            if info:
                return str(info[0][4][0]), int(url.port)
    return None


def findings(report: NatReport, has_turn: bool) -> list[Any]:
    """``symmetric-nat-no-turn`` when this network's NAT maps per destination and no TURN."""
    from iceward.diagnose.findings import make_finding

    if not report.symmetric or has_turn:
        return []
    evidence = [
        f"NAT mapping is {report.mapping} (RFC 5780 tests against "
        f"{report.server[0]}:{report.server[1]}); filtering {report.filtering}",
        "the server-reflexive candidate is only valid toward the STUN server: peers behind "
        "port-restricted or symmetric NATs cannot answer it",
        "the configuration has no usable TURN URL",
    ]
    return [make_finding("symmetric-nat-no-turn", evidence, subject="this network")]
