"""Evidence in the model → findings (the shared vocabulary of :mod:`iceward.diagnose`).

Rules run per PeerConnection in the order field reports rank the causes of "ICE failed"; each
finding carries the evidence lines that made it fire. Severity follows context (DESIGN.md): on a
call that connected anyway, configuration weaknesses and partial failures are warnings; errors
explain a failure. When a call failed and no rule explains it, ``ice-failed-unknown`` carries the
evidence instead.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from iceward.analyze.model import (
    CANDIDATE_TYPES,
    ERROR_CATEGORY_TEXT,
    Candidate,
    CandidateError,
    Config,
    PeerConnectionReport,
    Series,
)
from iceward.diagnose import Finding, make_finding, rank
from iceward.diagnose.address import is_internal
from iceward.diagnose.findings import Severity
from iceward.diagnose.iceurl import IceUrl, read_url

#: Seconds without progress after negotiation before a never-connected call counts as failed.
STUCK_AFTER_S = 5.0
#: Counters must stay flat this long while connected for connected-no-media.
FLAT_FOR_S = 5.0
HIGH_RTT_S = 0.3
MAX_EVIDENCE = 14
UNREACHABLE = ("dns", "timeout", "connect-failed", "unreachable")


def _read(urls: list[str]) -> list[IceUrl]:
    """The STUN/TURN URLs among ``urls``, parsed leniently (they come from a browser)."""
    return [u for u in map(read_url, urls) if u is not None]


def _host(url: str) -> str | None:
    parsed = read_url(url)
    return (parsed.host or None) if parsed is not None else None


def candidate_summary(pc: PeerConnectionReport) -> str:
    def side(cands: list[Candidate]) -> str:
        if not cands:
            return "none"
        counts = Counter(c.type for c in cands)
        order = [t for t in CANDIDATE_TYPES if counts[t]] + sorted(
            t for t in counts if t not in CANDIDATE_TYPES
        )
        return ", ".join(f"{counts[t]} {t}" for t in order)

    return f"candidates: local {side(pc.local())}; remote {side(pc.remote())}"


def outcome_text(pc: PeerConnectionReport) -> str:
    conn = pc.history("connection")
    ice = pc.history("iceConnection")
    failed_at = pc.first_time("connection", "failed") or pc.first_time("iceConnection", "failed")
    ice_path = " → ".join(dict.fromkeys(s.state for s in ice)) if ice else None
    if failed_at is not None:
        text = f"connectionState went to failed at {pc.offset(failed_at)}"
        return text + (f" (iceConnectionState {ice_path})" if ice_path else "")
    if pc.connected:
        return "the call connected"
    if not pc.states and not pc.transport_ice_states:
        states = Counter(p.state or "?" for p in pc.pairs)
        if states:
            listed = ", ".join(f"{n} {s}" for s, n in states.most_common())
            return f"no event log; candidate pairs at the end: {listed}; none succeeded"
        return "no event log and no candidate pair: the call never got to connectivity checks"
    last_ice = pc.last_state("iceConnection") or "new"
    last_conn = conn[-1].state if conn else None
    end = pc.end
    span = f" until the end of the dump ({pc.offset(end)})" if end is not None else ""
    text = f"never connected: iceConnectionState stayed '{last_ice}'"
    if ice_path and ice_path != last_ice:
        text = f"never connected: iceConnectionState {ice_path}"
    if last_conn and last_conn != last_ice:
        text += f", connectionState '{last_conn}'"
    return text + span


def _negotiation_start(pc: PeerConnectionReport) -> float | None:
    for t, text, _ in pc.events:
        if text.startswith("setRemoteDescription") and t is not None:
            return t
    return pc.created


def is_problem(pc: PeerConnectionReport) -> bool:
    """The call failed, or it was negotiated and got nowhere for long enough to tell."""
    outcome = pc.outcome
    if outcome == "failed":
        return True
    if outcome != "not-connected":
        return False
    if pc.gathering_complete and not pc.local():
        return True
    start, end = _negotiation_start(pc) or pc.stats_start, pc.end
    return start is not None and end is not None and (end - start) / 1000 >= STUCK_AFTER_S


def _errors_by_url(pc: PeerConnectionReport) -> dict[str, list[CandidateError]]:
    out: dict[str, list[CandidateError]] = defaultdict(list)
    for err in pc.candidate_errors:
        out[err.url].append(err)
    return out


def _error_lines(pc: PeerConnectionReport, url: str, errors: list[CandidateError]) -> list[str]:
    lines: list[str] = []
    groups: dict[tuple[int, str], list[CandidateError]] = defaultdict(list)
    for err in errors:
        groups[(err.code, err.text)].append(err)
    for (code, text), errs in groups.items():
        what = ERROR_CATEGORY_TEXT.get(errs[0].category, "")
        count = f" ({len(errs)} times)" if len(errs) > 1 else ""
        lines.append(
            f"icecandidateerror {code} {text!r}{count} from {url}, first at"
            f" {pc.offset(errs[0].t)}" + (f": {what}" if what else "")
        )
    return lines


def _relay_from(pc: PeerConnectionReport, urls: list[str]) -> list[Candidate]:
    wanted = {u.lower() for u in urls}
    return [c for c in pc.local("relay") if c.url and c.url.lower() in wanted]


def _servers_text(pc: PeerConnectionReport) -> str:
    urls = pc.config.ice_servers
    if not urls:
        return "iceServers is empty"
    return "iceServers: " + ", ".join(urls) + " (no turn: or turns: URL)"


def _flat_window(
    pc: PeerConnectionReport, series: Series, start: float, stop: float
) -> tuple[float, float, float, float] | None:
    pts = [(t, v) for t, v in series.points if start <= t <= stop]
    if len(pts) < 3 or (pts[-1][0] - pts[0][0]) / 1000 < FLAT_FOR_S:
        return None
    return pts[0][0], pts[-1][0], pts[0][1], pts[-1][1]


def _growth(series: Series | None, start: float, stop: float) -> float:
    if series is None:
        return 0.0
    pts = [v for t, v in series.points if start <= t <= stop]
    return pts[-1] - pts[0] if len(pts) >= 2 else 0.0


def _no_media(pc: PeerConnectionReport) -> Finding | None:
    """Counters flat while connected: from the start, or media stopped arriving later on."""
    t_conn = (
        pc.first_time("iceConnection", "connected", "completed")
        or pc.first_time("connection", "connected")
        or pc.stats_start
    )
    if t_conn is None:
        return None
    stop = pc.end or 0.0
    for s in pc.states:
        if s.t is not None and s.t > t_conn and s.state in ("disconnected", "failed", "closed"):
            stop = s.t
            break
    if pc.closed_at is not None:
        stop = min(stop, pc.closed_at)
    received, sent = _pick(pc, "received"), _pick(pc, "sent")
    if received is None:
        return None
    settle = t_conn + 2000
    window = _flat_window(pc, received, settle, stop)
    evidence: list[str] = []
    severity: Severity = "warning"
    if window is not None and window[3] - window[2] <= 0:
        first, last, value, _ = window
        evidence.append(
            f"{received.name} stayed at {value:.0f} from {pc.offset(first)} to"
            f" {pc.offset(last)} while connected"
        )
        grew = _growth(sent, first, last)
        if grew > 0 and sent is not None:
            severity = "error"
            evidence.append(
                f"{sent.name} grew by {grew:.0f} in the same time: media goes out, nothing comes"
                " back"
            )
        elif any(s.source == "rtp" for s in pc.flow):
            severity = "error"
            evidence.append("RTP streams exist but nothing arrives")
        else:
            evidence.append("nothing was sent either: the application may simply have been idle")
    else:
        # Media that stopped arriving while the call stayed up and kept sending.
        pts = [(t, v) for t, v in received.points if settle <= t <= stop]
        last_rise = next(
            (pts[i][0] for i in range(len(pts) - 1, 0, -1) if pts[i][1] > pts[i - 1][1]), None
        )
        if last_rise is None or not pts:
            return None
        flat_s = (pts[-1][0] - last_rise) / 1000
        grew = _growth(sent, last_rise, pts[-1][0])
        if flat_s < 2 * FLAT_FOR_S or grew <= 0 or sent is None:
            return None
        severity = "error"
        evidence += [
            f"{received.name} stopped growing at {pc.offset(last_rise)} and stayed flat for"
            f" {flat_s:.0f} s while connected",
            f"{sent.name} grew by {grew:.0f} in the same time: media goes out, nothing comes back",
        ]
    if pc.selected:
        evidence.append("selected pair: " + pc.selected[-1].describe())
    return make_finding("connected-no-media", evidence, severity=severity, subject=pc.id)


def _connected_at(pc: PeerConnectionReport) -> float | None:
    return pc.first_time("iceConnection", "connected", "completed") or pc.first_time(
        "connection", "connected"
    )


def _dropped_at(pc: PeerConnectionReport) -> float | None:
    """When a call that had connected ended up failed (None if it did not)."""
    connected = _connected_at(pc)
    if connected is None:
        return None
    conn = pc.history("connection") or pc.history("iceConnection")
    if conn and conn[-1].state == "failed" and conn[-1].t is not None and conn[-1].t > connected:
        return conn[-1].t
    return None


def _pick(pc: PeerConnectionReport, direction: str) -> Series | None:
    for unit in ("bytes", "packets"):
        for source in ("transport", "pair", "legacy", "rtp"):
            for s in pc.flow:
                if s.direction == direction and s.unit == unit and s.source == source:
                    return s
    return None


def _mismatched_remote(pc: PeerConnectionReport, peers: list[PeerConnectionReport]) -> list[str]:
    """Remote candidates whose ufrag names another PC of this dump that never gathered them."""
    lines: list[str] = []
    for other in peers:
        if other is pc:
            continue
        theirs = {c.ufrag for c in other.local() if c.ufrag}
        if not theirs:
            continue
        ours = [c for c in pc.remote() if c.ufrag in theirs]
        if not ours:
            continue
        gathered = {(c.type, (c.address or "").lower(), c.port) for c in other.local()}
        altered = [c for c in ours if (c.type, (c.address or "").lower(), c.port) not in gathered]
        if altered:
            sample = ", ".join(c.describe() for c in altered[:3])
            lines.append(
                f"{len(altered)} of {len(ours)} remote candidates carry the ufrag of"
                f" PeerConnection {other.id} in this dump but match none it gathered ({sample}):"
                " signalling delivered altered candidates"
            )
    return lines


def _pair_check_summary(pc: PeerConnectionReport) -> tuple[str | None, int, int]:
    checked = [p for p in pc.pairs if (p.requests_sent or 0) > 0]
    sent = sum(p.requests_sent or 0 for p in checked)
    answered = sum(p.responses_received or 0 for p in pc.pairs)
    if not pc.pairs:
        return None, 0, 0
    vanished = sum(1 for p in pc.pairs if p.vanished)
    text = (
        f"{len(pc.pairs)} candidate pairs, {len(checked)} checked: {sent} connectivity checks"
        f" sent, {answered} answered"
    )
    if vanished:
        text += f"; {vanished} pairs vanished from the stats (Chromium drops failed pairs)"
    return text, sent, answered


@dataclass(frozen=True, slots=True)
class Call:
    """One PeerConnection and what several rules ask of it, worked out once."""

    pc: PeerConnectionReport
    #: Every PeerConnection of the input (a remote candidate may name another one's ufrag).
    peers: list[PeerConnectionReport]
    #: The call failed, or got nowhere for long enough to tell (:func:`is_problem`).
    problem: bool
    turn_urls: list[str]
    relay_local: list[Candidate]
    #: A relay candidate on either side.
    relay_any: bool
    errors: dict[str, list[CandidateError]]
    #: URLs whose server answered and refused the credential.
    auth_urls: list[str]
    #: iceTransportPolicy 'relay'.
    relay_policy: bool
    #: There are TURN URLs and every one is UDP.
    udp_only: bool
    #: When a call that had connected ended up failed, else None.
    dropped_at: float | None

    @property
    def cfg(self) -> Config:
        return self.pc.config

    @property
    def sev_fail(self) -> Severity:
        """Errors explain a failure; on a call that got through they are warnings."""
        return "error" if self.problem else "warning"


def _call(pc: PeerConnectionReport, peers: list[PeerConnectionReport]) -> Call:
    cfg = pc.config
    errors = _errors_by_url(pc)
    relay_local = pc.local("relay")
    return Call(
        pc=pc,
        peers=peers,
        problem=is_problem(pc),
        turn_urls=cfg.turn_urls,
        relay_local=relay_local,
        relay_any=bool(relay_local or pc.remote("relay")),
        errors=errors,
        auth_urls=[u for u, errs in errors.items() if any(e.category == "auth" for e in errs)],
        relay_policy=(cfg.ice_transport_policy or "").lower() == "relay",
        udp_only=bool(cfg.turn_urls) and all(u.transport == "udp" for u in _read(cfg.turn_urls)),
        dropped_at=_dropped_at(pc),
    )


#: A rule sees the call and the findings of the rules before it (in rank order).
Rule = Callable[[Call, Sequence[Finding]], list[Finding]]


# -- the rules, in ranking order ----------------------------------------------------------------


def no_turn(call: Call, found: Sequence[Finding]) -> list[Finding]:
    pc, cfg = call.pc, call.cfg
    if cfg.known and not call.turn_urls and (call.relay_policy or call.problem):
        evidence = [_servers_text(pc)]
        if call.relay_policy:
            evidence.append(
                "iceTransportPolicy is 'relay': only relay candidates may be used, and without a"
                " TURN URL there can be none"
            )
        evidence += [candidate_summary(pc), outcome_text(pc)]
        return [make_finding("no-turn", evidence, subject=pc.id)]
    if not cfg.known and call.problem and not call.relay_any and not pc.candidate_errors:
        evidence = [
            "no relay candidate on either side",
            "the input carries no iceServers configuration: TURN was either missing or unusable",
            candidate_summary(pc),
            outcome_text(pc),
        ]
        return [make_finding("no-turn", evidence, subject=pc.id)]
    return []


def auth_failed(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """turn-auth-failed, one finding per iceServers entry: its URLs share the credential."""
    pc, auth_urls = call.pc, call.auth_urls
    groups = [g for g in call.cfg.server_groups if any(u in auth_urls for u in g)]
    covered = {u for g in groups for u in g}
    groups += [[u] for u in auth_urls if u not in covered]
    out = []
    for group in groups:
        refused = [u for u in group if u in auth_urls]
        if _relay_from(pc, group):
            continue
        evidence = []
        for url in refused:
            evidence += _error_lines(pc, url, [e for e in call.errors[url] if e.category == "auth"])
        evidence.append(
            "no relay candidate from "
            + ("this URL" if len(refused) == 1 else "these URLs")
            + ("" if call.relay_local else " (none at all)")
            + ": the server answered and refused the credential"
        )
        out.append(
            make_finding(
                "turn-auth-failed", evidence, severity=call.sev_fail, subject=", ".join(refused)
            )
        )
    return out


def credential_expired(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """turn-credential-expired (only when the input kept the REST username)."""
    pc = call.pc
    started = pc.created or pc.stats_start
    if started is None:
        return []
    out = []
    for expiry in call.cfg.credential_expiries:
        if expiry * 1000 < started:
            when = datetime.fromtimestamp(expiry, UTC).isoformat()
            out.append(
                make_finding(
                    "turn-credential-expired",
                    [
                        f"the TURN REST username expired at {when}, "
                        f"{(started / 1000 - expiry) / 60:.0f} min before the call started",
                    ],
                    severity=call.sev_fail,
                    subject=pc.id,
                )
            )
    return out


def udp_only(call: Call, found: Sequence[Finding]) -> list[Finding]:
    if not call.udp_only:
        return []
    evidence = ["every TURN URL is UDP: " + ", ".join(call.turn_urls)]
    severity: Severity = "warning"
    if call.problem and not call.relay_local and not call.auth_urls:
        severity = "error"
        evidence.append(
            "no relay candidate was gathered: where UDP is blocked no TURN URL can work"
        )
    return [make_finding("turn-udp-only", evidence, severity=severity, subject=call.pc.id)]


def symmetric_nat(call: Call, found: Sequence[Finding]) -> list[Finding]:
    pc = call.pc
    local_srflx, remote_srflx = pc.local("srflx"), pc.remote("srflx") + pc.remote("prflx")
    if not (call.problem and local_srflx and remote_srflx and not call.relay_any):
        return []
    text, sent, answered = _pair_check_summary(pc)
    if not sent or answered:
        return []
    evidence = [
        "server-reflexive candidates on both sides: local "
        + ", ".join(c.endpoint() for c in local_srflx[:3])
        + "; remote "
        + ", ".join(c.endpoint() for c in remote_srflx[:3]),
        text or "",
        "no relay candidate on either side",
    ]
    if call.cfg.known and not call.turn_urls:
        evidence.append("no TURN URL in the configuration")
    evidence.append(outcome_text(pc))
    return [make_finding("symmetric-nat-no-turn", evidence, subject=pc.id)]


def no_tls_443(call: Call, found: Sequence[Finding]) -> list[Finding]:
    turn_urls = call.turn_urls
    if not turn_urls or call.udp_only:
        return []
    if any(u.scheme == "turns" and u.port == 443 for u in _read(turn_urls)):
        return []
    evidence = ["no turns: URL on port 443 among " + ", ".join(turn_urls)]
    return [make_finding("no-tls-443", evidence, subject=call.pc.id)]


def turn_unreachable(call: Call, found: Sequence[Finding]) -> list[Finding]:
    pc, errors, turn_urls = call.pc, call.errors, call.turn_urls
    turn_candidates = turn_urls or [u for u in errors if u.lower().startswith(("turn:", "turns:"))]
    configured = {u.lower() for u in call.cfg.ice_servers}
    implied: dict[str, list[CandidateError]] = defaultdict(list)
    for url, errs in errors.items():
        stun = read_url(url)
        if stun is None or stun.scheme != "stun" or url.lower() in configured:
            continue
        # Chromium also sends Binding requests to each TURN server's address.
        for turn in turn_candidates:
            server = read_url(turn)
            if server is None or (server.host, server.port) != (stun.host, stun.port):
                continue
            if server.transport == "udp":
                implied[turn].extend(e for e in errs if e.category in UNREACHABLE)
                break
    out = []
    for url in turn_candidates:
        errs = errors.get(url, [])
        bad = [e for e in errs if e.category in UNREACHABLE]
        noise = [e for e in errs if e.category == "ipv6-noise"]
        if not bad or _relay_from(pc, [url]):
            continue
        evidence = _error_lines(pc, url, bad)
        for stun_err in implied.get(url, [])[:1]:
            evidence += _error_lines(pc, stun_err.url, [stun_err])
        evidence.append("no relay candidate from this URL")
        if noise:
            evidence.append(
                f"{len(noise)} more 701 errors from IPv6 interfaces ignored (noise: an IPv6"
                " interface cannot reach an IPv4 server)"
            )
        severity: Severity = "error" if call.problem and not call.relay_local else "warning"
        out.append(make_finding("turn-unreachable", evidence, severity=severity, subject=url))
    if (
        call.problem
        and turn_urls
        and not call.relay_local
        and not call.auth_urls
        and not out
        and not pc.gathering_complete
        and not any(e.category in UNREACHABLE for errs in errors.values() for e in errs)
    ):
        evidence = [
            "no relay candidate from any TURN URL: " + ", ".join(turn_urls),
            "ICE gathering never completed (still"
            f" '{pc.last_state('iceGathering') or 'new'}' at {pc.offset(pc.end)})",
            "Chromium reports 701 for unreachable TURN servers only after about 40 s:"
            " this dump ends before that",
        ]
        out.append(make_finding("turn-unreachable", evidence, subject=", ".join(turn_urls)))
    return out


def relay_blocked(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """relay-ports-blocked: relay candidates were gathered (the allocation worked), checks went
    out over them to the other side's relay candidates and not one was answered, and no pair got
    through. Relay to relay only: checks to a host or srflx address may die anywhere on the way
    (or at a candidate the signalling altered, which the evidence of this input rules out)."""
    pc = call.pc
    if not call.problem or not call.relay_local:
        return []
    relayed = [p for p in pc.pairs if p.local is not None and p.local.type == "relay"]
    if not relayed or any(p.remote is None or p.remote.type != "relay" for p in relayed):
        return []
    sent = sum(p.requests_sent or 0 for p in relayed)
    answered = sum(p.responses_received or 0 for p in relayed)
    if not sent or answered or any(p.state == "succeeded" for p in pc.pairs):
        return []
    if _mismatched_remote(pc, call.peers):
        return []
    servers = sorted({c.url for c in call.relay_local if c.url})
    evidence = [
        f"{len(call.relay_local)} relay candidate(s) gathered"
        + (" from " + ", ".join(servers) if servers else "")
        + ": the TURN server allocated",
        f"{len(relayed)} candidate pairs over them: {sent} connectivity checks sent, none answered",
        "nothing crossed the relay: its port range is blocked between the peers",
        outcome_text(pc),
    ]
    return [make_finding("relay-ports-blocked", evidence, subject=pc.id)]


def stun_unreachable(call: Call, found: Sequence[Finding]) -> list[Finding]:
    pc, stun_urls = call.pc, call.cfg.stun_urls
    out = []
    for url in stun_urls:
        bad = [e for e in call.errors.get(url, []) if e.category in UNREACHABLE]
        got = [c for c in pc.local("srflx") if c.url and c.url.lower() == url.lower()]
        if bad and not got:
            evidence = [*_error_lines(pc, url, bad), "no server-reflexive candidate from this URL"]
            out.append(make_finding("stun-unreachable", evidence, subject=url))
    if (
        stun_urls
        and not out
        and not call.relay_policy
        and pc.gathering_complete
        and pc.local("host")
        and not pc.local("srflx")
        and any(not is_internal(u.host) for u in _read(stun_urls))
    ):
        evidence = [
            "gathering completed without a server-reflexive candidate although STUN is"
            " configured: " + ", ".join(stun_urls),
            candidate_summary(pc),
        ]
        out.append(make_finding("stun-unreachable", evidence, subject=pc.id))
    return out


def private_relay(call: Call, found: Sequence[Finding]) -> list[Finding]:
    private = [c for c in call.relay_local if is_internal(c.address)]
    if not private:
        return []
    servers = {_host(c.url) for c in private if c.url} or {_host(u) for u in call.turn_urls}
    server_private = bool(servers) and all(is_internal(h) for h in servers)
    evidence = [
        f"relay candidate {c.endpoint()}" + (f" from {c.url}" if c.url else "") for c in private[:4]
    ]
    if server_private:
        evidence.append(
            "the TURN server itself was reached on a private address ("
            + ", ".join(sorted(h for h in servers if h))
            + "): fine in a lab or a LAN, unreachable for peers elsewhere"
        )
    else:
        evidence.append(
            "the server is reached on a public address but relays from a private one:"
            " peers elsewhere cannot send to it"
        )
    severity: Severity = "warning" if server_private else "error"
    return [make_finding("private-relay-address", evidence, severity=severity, subject=call.pc.id)]


def static_credentials(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """static-credentials (only when the input kept usernames)."""
    count = call.cfg.static_credentials
    if not count:
        return []
    evidence = (
        f"{count} iceServers entr"
        + ("y has" if count == 1 else "ies have")
        + " a username that is not a TURN REST (expiry:user) username"
    )
    return [make_finding("static-credentials", [evidence], subject=call.pc.id)]


def no_media(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """connected-no-media."""
    finding = _no_media(call.pc) if call.pc.connected else None
    return [finding] if finding is not None else []


def latency(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """high-relay-latency."""
    pc = call.pc
    if not (pc.selected and pc.connected):
        return []
    sel = pc.selected[-1]
    pair = next((p for p in pc.pairs if p.id == sel.pair_id), None)
    rtt = pair.current_rtt if pair else sel.rtt
    relayed = any(c is not None and c.type == "relay" for c in (sel.local, sel.remote))
    if not relayed or rtt is None or rtt < HIGH_RTT_S:
        return []
    evidence = [f"round-trip time on the relayed pair: {rtt * 1000:.0f} ms"]
    return [make_finding("high-relay-latency", evidence, subject=pc.id)]


def dropped(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """ice-failed-unknown for a call that connected and then failed, when no error explains it."""
    pc, dropped_at = call.pc, call.dropped_at
    if dropped_at is None or any(f.severity == "error" for f in found):
        return []
    evidence = [
        f"connected at {pc.offset(_connected_at(pc))}, then connectionState failed at"
        f" {pc.offset(dropped_at)}"
    ]
    if pc.selected:
        sel = pc.selected[-1]
        pair = next((p for p in pc.pairs if p.id == sel.pair_id), None)
        evidence.append(f"selected pair: {sel.describe()}")
        if pair is not None and pair.requests_sent is not None:
            evidence.append(
                f"on that pair {pair.requests_sent} checks sent,"
                f" {pair.responses_received or 0} answered"
            )
    received = _pick(pc, "received")
    if received is not None and len(received.points) >= 2:
        last_rise = next(
            (
                received.points[i][0]
                for i in range(len(received.points) - 1, 0, -1)
                if received.points[i][1] > received.points[i - 1][1]
            ),
            None,
        )
        if last_rise is not None:
            evidence.append(f"{received.name} last grew at {pc.offset(last_rise)}")
    evidence.append("the path died mid-call: network change, NAT binding or TURN allocation lost")
    return [make_finding("ice-failed-unknown", evidence, subject=pc.id)]


def unexplained(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """ice-failed-unknown for a failed call no error explains, with the evidence there is."""
    pc = call.pc
    if not call.problem or any(f.severity == "error" for f in found):
        return []
    evidence = [outcome_text(pc), candidate_summary(pc)]
    if not pc.remote():
        evidence.append(
            "no remote candidate was added (no addIceCandidate, none in the remote"
            " description): the other side's candidates never arrived"
        )
    text, _, _ = _pair_check_summary(pc)
    if text:
        evidence.append(text)
    evidence += _mismatched_remote(pc, call.peers)
    for url, errs in call.errors.items():
        real = [e for e in errs if e.category != "ipv6-noise"]
        if real:
            evidence += _error_lines(pc, url, real)
    if pc.source == "webrtc-internals" and pc.stats_start is None:
        evidence.append("the dump holds no stats for this PeerConnection")
    return [make_finding("ice-failed-unknown", evidence, subject=pc.id)]


def selected_path(call: Call, found: Sequence[Finding]) -> list[Finding]:
    """relay-in-use or direct-path: what the connected call ran over."""
    pc = call.pc
    if not (pc.selected and pc.connected):
        return []
    sel = pc.selected[-1]
    evidence = [f"selected pair {sel.pair_id}: {sel.describe()}"]
    for label, cand in (("local", sel.local), ("remote", sel.remote)):
        if cand is not None:
            evidence.append(
                f"{label}: {cand.describe()}" + (f" from {cand.url}" if cand.url else "")
            )
    changes = len(pc.selected) - 1
    if pc.selected_changes and pc.selected_changes > 1:
        changes = max(changes, pc.selected_changes - 1)
    if changes > 0:
        evidence.append(f"the selected pair changed {changes} time(s)")
    relayed = any(c is not None and c.type == "relay" for c in (sel.local, sel.remote))
    subject = None
    if sel.local is not None and sel.local.type == "relay":
        subject = sel.local.url or sel.local.relay_protocol
    code = "relay-in-use" if relayed else "direct-path"
    return [make_finding(code, evidence, subject=subject or pc.id)]


RULES: tuple[Rule, ...] = (
    no_turn, auth_failed, credential_expired, udp_only, symmetric_nat, no_tls_443,
    turn_unreachable, relay_blocked, stun_unreachable, private_relay, static_credentials,
    no_media, latency, dropped, unexplained, selected_path,
)  # fmt: skip


def check_pc(pc: PeerConnectionReport, peers: list[PeerConnectionReport]) -> list[Finding]:
    """All findings for one PeerConnection, ranked."""
    if pc.outcome == "unused":
        return []
    call = _call(pc, peers)
    findings: list[Finding] = []
    for rule in RULES:
        findings += rule(call, findings)
    if pc.outcome == "connected" and call.dropped_at is None:
        for f in findings:
            if f.severity == "error" and f.code != "connected-no-media":
                f.severity = "warning"
    for f in findings:
        f.evidence = [e for e in f.evidence if e][:MAX_EVIDENCE]
    return rank(findings)


def notes_for(pc: PeerConnectionReport) -> list[str]:
    """What the dump itself leaves out: late start, the 1000-point buffer, no stats."""
    notes: list[str] = []
    if pc.log_starts_late:
        first = pc.states[0] if pc.states else None
        notes.append(
            "webrtc-internals was opened after this call started: the event log begins mid-call"
            + (f" (first recorded: {first.kind} '{first.state}')" if first else "")
            + "; setup, early candidates and the time to connect are missing"
        )
    elif pc.stats_start is not None and pc.created is not None:
        lag = (pc.stats_start - pc.created) / 1000
        connected_at = pc.first_time("iceConnection", "connected", "completed")
        if lag > 10 and connected_at is not None and connected_at < pc.stats_start:
            notes.append(
                f"stats begin {lag:.0f} s after the call started (webrtc-internals opened late):"
                " counters before that are missing"
            )
    if pc.series_at_buffer_limit:
        cut = pc.extra.get("buffer_cut_from")
        when = f" before {pc.offset(cut)}" if isinstance(cut, float) else ""
        notes.append(
            f"{pc.series_at_buffer_limit} stats series are cut at webrtc-internals' 1000-point"
            f" buffer: only the last 1000 samples are kept, stats{when} are missing"
        )
    if pc.source == "webrtc-internals" and pc.stats_start is None and pc.outcome != "unused":
        notes.append(
            "no getStats data for this PeerConnection (webrtc-internals polls stats only while"
            " its tab is open and the connection has a transport)"
        )
    if pc.outcome == "unused":
        notes.append("never negotiated (no remote description): nothing to diagnose")
    if pc.connected and pc.last_state("connection") == "disconnected":
        last = pc.history("connection")[-1]
        notes.append(
            f"the connection was 'disconnected' from {pc.offset(last.t)} to the end of the"
            " dump: the path stopped answering (it may have recovered later)"
        )
    return notes


def analyze(reports: list[PeerConnectionReport]) -> list[Finding]:
    """Findings per PeerConnection (stored on each) and the merged, ranked top-level list."""
    for pc in reports:
        pc.notes.extend(n for n in notes_for(pc) if n not in pc.notes)
        pc.findings = check_pc(pc, reports)
    return merge(reports)


def merge(reports: list[PeerConnectionReport]) -> list[Finding]:
    merged: dict[tuple[str, str | None, str], Finding] = {}
    for pc in reports:
        for f in pc.findings:
            subject = None if f.subject == pc.id else f.subject
            key = (f.code, subject, f.severity)
            tagged = [f"[{pc.id}] {e}" for e in f.evidence] if len(reports) > 1 else f.evidence
            if key not in merged:
                merged[key] = make_finding(
                    f.code,
                    list(tagged),
                    severity=f.severity,
                    subject=subject if subject is not None else pc.id,
                )
                continue
            target = merged[key]
            if subject is None and target.subject and pc.id not in target.subject.split(", "):
                target.subject = f"{target.subject}, {pc.id}"
            for line in tagged:
                if line not in target.evidence and len(target.evidence) < MAX_EVIDENCE:
                    target.evidence.append(line)
    return rank(list(merged.values()))
