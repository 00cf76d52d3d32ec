"""Evidence in the model → findings (the shared vocabulary of :mod:`iceward.diagnose`).

Rules run per PeerConnection in the order field reports rank the causes of "ICE failed"; each
finding carries the evidence lines that made it fire. Severity follows context (DESIGN.md): on a
call that connected anyway, configuration weaknesses and partial failures are warnings; errors
explain a failure. When a call failed and no rule explains it, ``ice-failed-unknown`` carries the
evidence instead.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from datetime import UTC, datetime

from iceward.analyze.model import (
    CANDIDATE_TYPES,
    ERROR_CATEGORY_TEXT,
    Candidate,
    CandidateError,
    PeerConnectionReport,
    Series,
    url_host,
    url_port,
    url_transport,
)
from iceward.diagnose import Finding, make_finding, rank
from iceward.diagnose.findings import Severity

#: Seconds without progress after negotiation before a never-connected call counts as failed.
STUCK_AFTER_S = 5.0
#: Counters must stay flat this long while connected for connected-no-media.
FLAT_FOR_S = 5.0
HIGH_RTT_S = 0.3
MAX_EVIDENCE = 14
UNREACHABLE = ("dns", "timeout", "connect-failed", "unreachable")
#: Addresses nobody elsewhere can send to. Documentation ranges (192.0.2.0/24...) stand for
#: public addresses in examples and tests, so they are not listed (Python's is_private has them).
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "::/128",
    )
)


def is_private_address(address: str | None) -> bool:
    """Loopback, RFC 1918, CGNAT, link-local, ULA, localhost and mDNS names."""
    if not address:
        return False
    a = address.strip("[]").lower()
    if a in ("localhost", "localhost.localdomain") or a.endswith((".local", ".localhost")):
        return True
    try:
        ip = ipaddress.ip_address(a)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _PRIVATE)


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


def check_pc(pc: PeerConnectionReport, peers: list[PeerConnectionReport]) -> list[Finding]:
    """All findings for one PeerConnection, ranked."""
    if pc.outcome == "unused":
        return []
    findings: list[Finding] = []
    cfg = pc.config
    problem = is_problem(pc)
    turn_urls = cfg.turn_urls
    relay_local = pc.local("relay")
    relay_any = relay_local or pc.remote("relay")
    errors = _errors_by_url(pc)
    auth_urls = [u for u, errs in errors.items() if any(e.category == "auth" for e in errs)]
    sev_fail: Severity = "error" if problem else "warning"

    # no-turn ---------------------------------------------------------------------------------
    relay_policy = (cfg.ice_transport_policy or "").lower() == "relay"
    if cfg.known and not turn_urls and (relay_policy or problem):
        evidence = [_servers_text(pc)]
        if relay_policy:
            evidence.append(
                "iceTransportPolicy is 'relay': only relay candidates may be used, and without a"
                " TURN URL there can be none"
            )
        evidence += [candidate_summary(pc), outcome_text(pc)]
        findings.append(make_finding("no-turn", evidence, subject=pc.id))
    elif not cfg.known and problem and not relay_any and not pc.candidate_errors:
        findings.append(
            make_finding(
                "no-turn",
                [
                    "no relay candidate on either side",
                    "the input carries no iceServers configuration: TURN was either missing or"
                    " unusable",
                    candidate_summary(pc),
                    outcome_text(pc),
                ],
                subject=pc.id,
            )
        )

    # turn-auth-failed (one finding per iceServers entry: its URLs share the credential) -------
    if auth_urls:
        groups = [g for g in cfg.server_groups if any(u in auth_urls for u in g)]
        covered = {u for g in groups for u in g}
        groups += [[u] for u in auth_urls if u not in covered]
        for group in groups:
            refused = [u for u in group if u in auth_urls]
            if _relay_from(pc, group):
                continue
            evidence = []
            for url in refused:
                evidence += _error_lines(pc, url, [e for e in errors[url] if e.category == "auth"])
            evidence.append(
                "no relay candidate from "
                + ("this URL" if len(refused) == 1 else "these URLs")
                + ("" if relay_local else " (none at all)")
                + ": the server answered and refused the credential"
            )
            findings.append(
                make_finding(
                    "turn-auth-failed", evidence, severity=sev_fail, subject=", ".join(refused)
                )
            )

    # turn-credential-expired (only when the input kept the REST username) --------------------
    started = pc.created or pc.stats_start
    if started is not None:
        for expiry in cfg.credential_expiries:
            if expiry * 1000 < started:
                when = datetime.fromtimestamp(expiry, UTC).isoformat()
                findings.append(
                    make_finding(
                        "turn-credential-expired",
                        [
                            f"the TURN REST username expired at {when}, "
                            f"{(started / 1000 - expiry) / 60:.0f} min before the call started",
                        ],
                        severity=sev_fail,
                        subject=pc.id,
                    )
                )

    # turn-udp-only -------------------------------------------------------------------------
    udp_only = bool(turn_urls) and all(url_transport(u) == "udp" for u in turn_urls)
    if udp_only:
        evidence = ["every TURN URL is UDP: " + ", ".join(turn_urls)]
        severity: Severity = "warning"
        if problem and not relay_local and not auth_urls:
            severity = "error"
            evidence.append(
                "no relay candidate was gathered: where UDP is blocked no TURN URL can work"
            )
        findings.append(make_finding("turn-udp-only", evidence, severity=severity, subject=pc.id))

    # symmetric-nat-no-turn -------------------------------------------------------------------
    local_srflx, remote_srflx = pc.local("srflx"), pc.remote("srflx") + pc.remote("prflx")
    if problem and local_srflx and remote_srflx and not relay_any:
        text, sent, answered = _pair_check_summary(pc)
        if sent and not answered:
            evidence = [
                "server-reflexive candidates on both sides: local "
                + ", ".join(c.endpoint() for c in local_srflx[:3])
                + "; remote "
                + ", ".join(c.endpoint() for c in remote_srflx[:3]),
                text or "",
                "no relay candidate on either side",
            ]
            if cfg.known and not turn_urls:
                evidence.append("no TURN URL in the configuration")
            evidence.append(outcome_text(pc))
            findings.append(make_finding("symmetric-nat-no-turn", evidence, subject=pc.id))

    # no-tls-443 ------------------------------------------------------------------------------
    if turn_urls and not udp_only:
        tls443 = [u for u in turn_urls if u.lower().startswith("turns:") and url_port(u) == 443]
        if not tls443:
            findings.append(
                make_finding(
                    "no-tls-443",
                    ["no turns: URL on port 443 among " + ", ".join(turn_urls)],
                    subject=pc.id,
                )
            )

    # turn-unreachable ------------------------------------------------------------------------
    turn_candidates = turn_urls or [u for u in errors if u.lower().startswith(("turn:", "turns:"))]
    configured = {u.lower() for u in cfg.ice_servers}
    implied: dict[str, list[CandidateError]] = defaultdict(list)
    for url, errs in errors.items():
        if url.lower().startswith("stun:") and url.lower() not in configured:
            # Chromium also sends Binding requests to each TURN server's address.
            for turn in turn_candidates:
                same = (url_host(turn), url_port(turn)) == (url_host(url), url_port(url))
                if same and url_transport(turn) == "udp":
                    implied[turn].extend(e for e in errs if e.category in UNREACHABLE)
                    break
    reported_unreachable = False
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
        unreachable_sev: Severity = "error" if problem and not relay_local else "warning"
        findings.append(
            make_finding("turn-unreachable", evidence, severity=unreachable_sev, subject=url)
        )
        reported_unreachable = True
    if (
        problem
        and turn_urls
        and not relay_local
        and not auth_urls
        and not reported_unreachable
        and not pc.gathering_complete
        and not any(e.category in UNREACHABLE for errs in errors.values() for e in errs)
    ):
        findings.append(
            make_finding(
                "turn-unreachable",
                [
                    "no relay candidate from any TURN URL: " + ", ".join(turn_urls),
                    "ICE gathering never completed (still"
                    f" '{pc.last_state('iceGathering') or 'new'}' at {pc.offset(pc.end)})",
                    "Chromium reports 701 for unreachable TURN servers only after about 40 s:"
                    " this dump ends before that",
                ],
                subject=", ".join(turn_urls),
            )
        )

    # stun-unreachable ------------------------------------------------------------------------
    for url in cfg.stun_urls:
        bad = [e for e in errors.get(url, []) if e.category in UNREACHABLE]
        got = [c for c in pc.local("srflx") if c.url and c.url.lower() == url.lower()]
        if bad and not got:
            findings.append(
                make_finding(
                    "stun-unreachable",
                    [*_error_lines(pc, url, bad), "no server-reflexive candidate from this URL"],
                    subject=url,
                )
            )
    if (
        cfg.stun_urls
        and not relay_policy
        and pc.gathering_complete
        and pc.local("host")
        and not pc.local("srflx")
        and not any(f.code == "stun-unreachable" for f in findings)
        and any(not is_private_address(url_host(u)) for u in cfg.stun_urls)
    ):
        findings.append(
            make_finding(
                "stun-unreachable",
                [
                    "gathering completed without a server-reflexive candidate although STUN is"
                    " configured: " + ", ".join(cfg.stun_urls),
                    candidate_summary(pc),
                ],
                subject=pc.id,
            )
        )

    # private-relay-address -------------------------------------------------------------------
    private = [c for c in relay_local if is_private_address(c.address)]
    if private:
        servers = {url_host(c.url) for c in private if c.url} or {url_host(u) for u in turn_urls}
        server_private = bool(servers) and all(is_private_address(h) for h in servers)
        evidence = [
            f"relay candidate {c.endpoint()}" + (f" from {c.url}" if c.url else "")
            for c in private[:4]
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
        findings.append(
            make_finding(
                "private-relay-address",
                evidence,
                severity="warning" if server_private else "error",
                subject=pc.id,
            )
        )

    # static-credentials (only when the input kept usernames) --------------------------------
    if cfg.static_credentials:
        findings.append(
            make_finding(
                "static-credentials",
                [
                    f"{cfg.static_credentials} iceServers entr"
                    + ("y has" if cfg.static_credentials == 1 else "ies have")
                    + " a username that is not a TURN REST (expiry:user) username"
                ],
                subject=pc.id,
            )
        )

    # connected-no-media ----------------------------------------------------------------------
    if pc.connected:
        finding = _no_media(pc)
        if finding is not None:
            findings.append(finding)

    # high-relay-latency ----------------------------------------------------------------------
    if pc.selected and pc.connected:
        sel = pc.selected[-1]
        pair = next((p for p in pc.pairs if p.id == sel.pair_id), None)
        rtt = pair.current_rtt if pair else sel.rtt
        relayed = any(c is not None and c.type == "relay" for c in (sel.local, sel.remote))
        if relayed and rtt is not None and rtt >= HIGH_RTT_S:
            findings.append(
                make_finding(
                    "high-relay-latency",
                    [f"round-trip time on the relayed pair: {rtt * 1000:.0f} ms"],
                    subject=pc.id,
                )
            )

    # ice-failed-unknown for a call that connected and then failed -------------------------
    dropped_at = _dropped_at(pc)
    if dropped_at is not None and not any(f.severity == "error" for f in findings):
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
        evidence.append(
            "the path died mid-call: network change, NAT binding or TURN allocation lost"
        )
        findings.append(make_finding("ice-failed-unknown", evidence, subject=pc.id))

    # ice-failed-unknown ----------------------------------------------------------------------
    if problem and not any(f.severity == "error" for f in findings):
        evidence = [outcome_text(pc), candidate_summary(pc)]
        if not pc.remote():
            evidence.append(
                "no remote candidate was added (no addIceCandidate, none in the remote"
                " description): the other side's candidates never arrived"
            )
        text, _, _ = _pair_check_summary(pc)
        if text:
            evidence.append(text)
        evidence += _mismatched_remote(pc, peers)
        for url, errs in errors.items():
            real = [e for e in errs if e.category != "ipv6-noise"]
            if real:
                evidence += _error_lines(pc, url, real)
        if pc.source == "webrtc-internals" and pc.stats_start is None:
            evidence.append("the dump holds no stats for this PeerConnection")
        findings.append(make_finding("ice-failed-unknown", evidence, subject=pc.id))

    # relay-in-use / direct-path --------------------------------------------------------------
    if pc.selected and pc.connected:
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
        findings.append(
            make_finding(
                "relay-in-use" if relayed else "direct-path", evidence, subject=subject or pc.id
            )
        )

    if pc.outcome == "connected" and dropped_at is None:
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
