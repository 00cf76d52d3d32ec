"""Minimal hand-built inputs for the eras and shapes that cannot be recorded here.

Each builder returns the parsed structure (write it with :func:`write`). They follow the formats
Chromium and the rtcstats library produced in each era: webrtc-internals before M117
(``RTCIceCandidatePair_*`` ids, no ``-timestamp`` series, locale ``time`` strings), M142 (JSON-
quoted values, event names without ``on``), M144+ (``on``-prefixed events, snake_case JSON
errors), rtcstats with delta-compressed stats, and getStats() exports.
Addresses are documentation ranges only.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

T0 = 1_700_000_000_000.0  # 2023-11-14T22:13:20Z


def iso(t: float) -> str:
    return (
        datetime.fromtimestamp(t / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def locale(t: float) -> str:
    """The en-US locale string older webrtc-internals put in ``time`` (local time; here UTC)."""
    return datetime.fromtimestamp(t / 1000, UTC).strftime("%-m/%-d/%Y, %-I:%M:%S %p")


def series(
    stats: dict[str, Any],
    oid: str,
    stats_type: str | None,
    attr: str,
    values: list[Any],
    start: float,
    step: float = 1000.0,
) -> None:
    entry: dict[str, Any] = {
        "startTime": iso(start),
        "endTime": iso(start + step * (len(values) - 1)),
        "values": json.dumps(values),
    }
    if stats_type:
        entry["statsType"] = stats_type
    stats[f"{oid}-{attr}"] = entry


def obj_series(
    stats: dict[str, Any],
    oid: str,
    stats_type: str | None,
    attrs: dict[str, Any],
    n: int,
    start: float,
    timestamps: bool,
) -> None:
    """Series for one stats object; scalar attrs are repeated, lists are taken as they are."""
    for attr, value in attrs.items():
        values = value if isinstance(value, list) else [value] * n
        series(stats, oid, stats_type, attr, values, start)
    if timestamps:
        series(stats, oid, stats_type, "timestamp", [start + i * 1000 for i in range(n)], start)


def write(path: Path, data: Any, *, gz: bool = False, lines: bool = False) -> Path:
    text = "\n".join(data) + "\n" if lines else json.dumps(data)
    raw = text.encode()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# ---- webrtc-internals before M117: a symmetric-NAT call without TURN -----------------------
def pre_m117_symmetric_nat() -> dict[str, Any]:
    """STUN only, srflx on both sides, every check unanswered, ICE fails (M100-era format)."""
    t = T0
    n = 20
    stats: dict[str, Any] = {}
    pair = "RTCIceCandidatePair_Lx1_Rx1"
    obj_series(
        stats,
        pair,
        "candidate-pair",
        {
            "transportId": "RTCTransport_0_1",
            "localCandidateId": "RTCIceCandidate_Lx1",
            "remoteCandidateId": "RTCIceCandidate_Rx1",
            "state": "in-progress",
            "nominated": False,
            "requestsSent": [4 * (i + 1) for i in range(n)],
            "responsesReceived": 0,
            "requestsReceived": 0,
            "responsesSent": 0,
            "bytesSent": 0,
            "bytesReceived": 0,
        },
        n,
        t + 1000,
        timestamps=False,
    )
    obj_series(
        stats,
        "RTCIceCandidate_Lx1",
        "local-candidate",
        {
            "isRemote": False,
            "address": "192.0.2.10",
            "port": 50001,
            "protocol": "udp",
            "candidateType": "host",
        },
        n,
        t + 1000,
        timestamps=False,
    )
    obj_series(
        stats,
        "RTCIceCandidate_Lx2",
        "local-candidate",
        {
            "isRemote": False,
            "address": "203.0.113.7",
            "port": 61001,
            "protocol": "udp",
            "candidateType": "srflx",
            "url": "stun:stun.example.org:3478",
        },
        n,
        t + 1000,
        timestamps=False,
    )
    obj_series(
        stats,
        "RTCIceCandidate_Rx1",
        "remote-candidate",
        {
            "isRemote": True,
            "address": "198.51.100.20",
            "port": 62002,
            "protocol": "udp",
            "candidateType": "srflx",
        },
        n,
        t + 1000,
        timestamps=False,
    )
    obj_series(
        stats,
        "RTCTransport_0_1",
        "transport",
        {"bytesSent": 0, "bytesReceived": 0, "dtlsState": "new", "iceState": "checking"},
        n,
        t + 1000,
        timestamps=False,
    )
    log = [
        (0, "createOffer", "options: {offerToReceiveVideo: 0}"),
        (5, "setLocalDescription", "type: offer, sdp: v=0\r\n"),
        (6, "signalingstatechange", "have-local-offer"),
        (7, "icegatheringstatechange", "gathering"),
        (
            60,
            "icecandidate",
            "sdpMid: 0, sdpMLineIndex: 0, candidate: candidate:1 1 udp 2122260223 192.0.2.10"
            " 50001 typ host generation 0 ufrag aaaa network-id 1",
        ),
        (
            120,
            "icecandidate",
            "sdpMid: 0, sdpMLineIndex: 0, candidate: candidate:2 1 udp 1686052607 203.0.113.7"
            " 61001 typ srflx raddr 192.0.2.10 rport 50001 generation 0 ufrag aaaa network-id 1",
        ),
        (300, "setRemoteDescription", "type: answer, sdp: v=0\r\n"),
        (301, "signalingstatechange", "stable"),
        (
            350,
            "addIceCandidate",
            "sdpMid: 0, sdpMLineIndex: 0, candidate: candidate:9 1 udp 1686052607 198.51.100.20"
            " 62002 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag bbbb",
        ),
        (351, "iceconnectionstatechange", "checking"),
        (352, "connectionstatechange", "connecting"),
        (400, "icegatheringstatechange", "complete"),
        (30_400, "iceconnectionstatechange", "failed"),
        (30_401, "connectionstatechange", "failed"),
    ]
    return {
        "getUserMedia": [],
        "PeerConnections": {
            "4242-1": {
                "constraints": "",
                "rtcConfiguration": "{ iceServers: [stun:stun.example.org:3478],"
                " iceTransportPolicy: all, bundlePolicy: max-bundle, rtcpMuxPolicy: require,"
                ' iceCandidatePoolSize: 0, sdpSemantics: "unified-plan" }',
                "url": "https://app.example.org/call",
                "stats": stats,
                "updateLog": [
                    {"time": locale(t + dt), "type": kind, "value": value}
                    for dt, kind, value in log
                ],
            }
        },
        "UserAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/100.0.4896.127 Safari/537.36",
    }


# ---- M142: JSON-quoted values; a TURN hostname that does not resolve ------------------------
def m142_turn_dns_failure(stun_works: bool = True) -> dict[str, Any]:
    """Connected host to host; the TURN host never resolves (701 lookup) plus IPv6 noise.

    With ``stun_works`` False no srflx candidate is gathered although STUN is configured.
    """
    t = T0
    n = 8
    stats: dict[str, Any] = {}
    obj_series(
        stats,
        "CPa1_b1",
        "candidate-pair",
        {
            "transportId": "T01",
            "localCandidateId": "Ia1",
            "remoteCandidateId": "Ib1",
            "state": "succeeded",
            "nominated": True,
            "requestsSent": 5,
            "responsesReceived": 5,
            "bytesSent": [i * 9000 for i in range(n)],
            "bytesReceived": [i * 8000 for i in range(n)],
            "currentRoundTripTime": 0.012,
        },
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "Ia1",
        "local-candidate",
        {"address": "192.0.2.10", "port": 50001, "protocol": "udp", "candidateType": "host"},
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "Ib1",
        "remote-candidate",
        {"address": "192.0.2.20", "port": 50002, "protocol": "udp", "candidateType": "host"},
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "T01",
        "transport",
        {
            "selectedCandidatePairId": "CPa1_b1",
            "bytesSent": [i * 9000 for i in range(n)],
            "bytesReceived": [i * 8000 for i in range(n)],
            "iceState": "connected",
            "selectedCandidatePairChanges": 1,
        },
        n,
        t + 1000,
        timestamps=True,
    )
    stats["CPa1_b1-[bytesSent_in_bits/s]"] = {
        "startTime": iso(t + 2000),
        "endTime": iso(t + 8000),
        "statsType": "candidate-pair",
        "values": json.dumps([72000] * (n - 1)),
    }
    turn = "turn:turn.example.invalid:3478?transport=udp"
    turn_tcp = "turn:turn.example.invalid:443?transport=tcp"
    err = (
        "url: {url}\naddress: {addr}\nport: 50001\nhost_candidate: {addr}:50001\n"
        "error_text: {text}\nerror_code: 701"
    )
    log = [
        (0, "createOffer", '{"offerToReceiveAudio":true}'),
        (2, "setLocalDescription", '{"type":"offer","sdp":"v=0\\r\\n"}'),
        (3, "signalingstatechange", '"have-local-offer"'),
        (4, "icegatheringstatechange", '"gathering"'),
        (
            20,
            "icecandidate",
            '{"sdpMid":"0","sdpMLineIndex":0,"candidate":"candidate:1 1 udp 2122260223'
            ' 192.0.2.10 50001 typ host generation 0 ufrag aaaa"}',
        ),
        (40, "setRemoteDescription", '{"type":"answer","sdp":"v=0\\r\\n"}'),
        (41, "signalingstatechange", '"stable"'),
        (
            50,
            "addIceCandidate",
            '{"sdpMid":"0","sdpMLineIndex":0,"candidate":"candidate:7 1 udp 2122260223'
            ' 192.0.2.20 50002 typ host generation 0 ufrag bbbb"}',
        ),
        *(
            [
                (
                    60,
                    "icecandidate",
                    '{"sdpMid":"0","sdpMLineIndex":0,"candidate":"candidate:2 1 udp 1686052607'
                    " 203.0.113.7 61001 typ srflx raddr 192.0.2.10 rport 50001 generation 0"
                    ' ufrag aaaa","url":"stun:stun.example.org:3478"}',
                )
            ]
            if stun_works
            else []
        ),
        (51, "iceconnectionstatechange", '"checking"'),
        (52, "connectionstatechange", '"connecting"'),
        (70, "iceconnectionstatechange", '"connected"'),
        (80, "connectionstatechange", '"connected"'),
        (
            90,
            "icecandidateerror",
            err.format(url=turn, addr="192.0.2.x", text="STUN host lookup received error."),
        ),
        (
            91,
            "icecandidateerror",
            err.format(url=turn_tcp, addr="192.0.2.x", text="STUN host lookup received error."),
        ),
        (
            95,
            "icecandidateerror",
            err.format(
                url="stun:stun.example.org:3478",
                addr="2001:db8::10",
                text="STUN binding request timed out.",
            ),
        ),
        (100, "icegatheringstatechange", '"complete"'),
    ]
    return {
        "getUserMedia": [],
        "PeerConnections": {
            "77-1": {
                "pid": 77,
                "rtcConfiguration": json.dumps(
                    {
                        "iceServers": [
                            {"urls": ["stun:stun.example.org:3478"]},
                            {"urls": [turn, turn_tcp]},
                        ],
                        "iceTransportPolicy": "all",
                        "bundlePolicy": "max-bundle",
                    }
                ),
                "url": "https://app.example.org/",
                "stats": stats,
                "updateLog": [
                    {"timestamp": t + dt, "type": kind, "value": value} for dt, kind, value in log
                ],
            }
        },
    }


# ---- M144+: on-prefixed events; connected through a relay, nothing comes back -------------
def m144_connected_no_media() -> dict[str, Any]:
    t = T0
    n = 15
    stats: dict[str, Any] = {}
    sent = [20_000 + i * 60_000 for i in range(n)]
    received = [3_000] * n
    obj_series(
        stats,
        "CPr1_r2",
        "candidate-pair",
        {
            "transportId": "T01",
            "localCandidateId": "Ir1",
            "remoteCandidateId": "Ir2",
            "state": "succeeded",
            "nominated": True,
            "requestsSent": 9,
            "responsesReceived": 9,
            "bytesSent": sent,
            "bytesReceived": received,
            "currentRoundTripTime": 0.045,
        },
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "Ir1",
        "local-candidate",
        {
            "address": "203.0.113.50",
            "port": 49200,
            "protocol": "udp",
            "candidateType": "relay",
            "relayProtocol": "tcp",
            "url": "turn:turn.example.org:3478?transport=tcp",
        },
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "Ir2",
        "remote-candidate",
        {"address": "198.51.100.9", "port": 40000, "protocol": "udp", "candidateType": "srflx"},
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "T01",
        "transport",
        {
            "selectedCandidatePairId": "CPr1_r2",
            "bytesSent": sent,
            "bytesReceived": received,
            "iceState": "connected",
        },
        n,
        t + 1000,
        timestamps=True,
    )
    obj_series(
        stats,
        "IT01V1234",
        "inbound-rtp",
        {"kind": "video", "packetsReceived": 0, "bytesReceived": 0},
        n,
        t + 1000,
        timestamps=True,
    )
    turn = "turn:turn.example.org:3478?transport=tcp"
    log = [
        (0, "addTransceiver", '{"kind":"video"}'),
        (1, "createOffer", "{}"),
        (2, "setLocalDescription", '{"type":"offer","sdp":"v=0\\r\\n"}'),
        (3, "onsignalingstatechange", '"have-local-offer"'),
        (4, "onicegatheringstatechange", '"gathering"'),
        (
            30,
            "onicecandidate",
            json.dumps(
                {
                    "sdpMid": "0",
                    "sdpMLineIndex": 0,
                    "candidate": "candidate:5 1 udp 25108479 203.0.113.50 49200 typ relay raddr"
                    " 192.0.2.10 rport 50001 generation 0 ufrag aaaa",
                    "url": turn,
                    "relayProtocol": "tcp",
                }
            ),
        ),
        (
            31,
            "onicecandidateerror",
            json.dumps(
                {
                    "url": "turn:turn.example.org:3478?transport=udp",
                    "address": "192.0.2.x",
                    "port": 50001,
                    "host_candidate": "192.0.2.x:50001",
                    "error_text": "TURN allocate request timed out.",
                    "error_code": 701,
                }
            ),
        ),
        (40, "setRemoteDescription", '{"type":"answer","sdp":"v=0\\r\\n"}'),
        (41, "onsignalingstatechange", '"stable"'),
        (
            50,
            "addIceCandidate",
            '{"sdpMid":"0","sdpMLineIndex":0,"candidate":"candidate:8 1 udp 1686052607'
            ' 198.51.100.9 40000 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag bbbb"}',
        ),
        (51, "oniceconnectionstatechange", '"checking"'),
        (52, "onconnectionstatechange", '"connecting"'),
        (300, "oniceconnectionstatechange", '"connected"'),
        (310, "onconnectionstatechange", '"connected"'),
    ]
    return {
        "getUserMedia": [],
        "PeerConnections": {
            "9-1": {
                "pid": 9,
                "rtcConfiguration": json.dumps(
                    {
                        "iceServers": [
                            {
                                "urls": [
                                    "turn:turn.example.org:3478?transport=udp",
                                    turn,
                                    "turns:turn.example.org:443?transport=tcp",
                                ]
                            }
                        ],
                        "iceTransportPolicy": "all",
                    }
                ),
                "url": "https://app.example.org/",
                "stats": stats,
                "updateLog": [
                    {"timestamp": t + dt, "type": kind, "value": value} for dt, kind, value in log
                ],
            }
        },
    }


# ---- webrtc-internals quirks: the 1000-point buffer and stats opened late -----------------
def buffer_cut_and_late_stats() -> dict[str, Any]:
    """A long call: stats begin 2 minutes in and every series holds the last 1000 points."""
    t = T0
    n = 1000
    stats_start = t + 120_000
    stats: dict[str, Any] = {}
    obj_series(
        stats,
        "T01",
        "transport",
        {
            "selectedCandidatePairId": "CPx_y",
            "bytesSent": [i * 50_000 for i in range(n)],
            "bytesReceived": [i * 50_000 for i in range(n)],
        },
        n,
        stats_start,
        timestamps=True,
    )
    obj_series(
        stats,
        "CPx_y",
        "candidate-pair",
        {
            "localCandidateId": "Ix",
            "remoteCandidateId": "Iy",
            "state": "succeeded",
            "nominated": True,
            "bytesSent": [i * 50_000 for i in range(n)],
            "bytesReceived": [i * 50_000 for i in range(n)],
        },
        n,
        stats_start,
        timestamps=True,
    )
    for oid, kind, addr in (
        ("Ix", "local-candidate", "192.0.2.1"),
        ("Iy", "remote-candidate", "192.0.2.2"),
    ):
        obj_series(
            stats,
            oid,
            kind,
            {"address": addr, "port": 5000, "protocol": "udp", "candidateType": "host"},
            n,
            stats_start,
            timestamps=True,
        )
    log = [
        (0, "createOffer", "{}"),
        (1, "setLocalDescription", '{"type":"offer","sdp":"v=0\\r\\n"}'),
        (2, "onsignalingstatechange", '"have-local-offer"'),
        (10, "setRemoteDescription", '{"type":"answer","sdp":"v=0\\r\\n"}'),
        (11, "onsignalingstatechange", '"stable"'),
        (12, "oniceconnectionstatechange", '"checking"'),
        (40, "oniceconnectionstatechange", '"connected"'),
        (41, "onconnectionstatechange", '"connected"'),
    ]
    return {
        "PeerConnections": {
            "1-1": {
                "rtcConfiguration": '{"iceServers":[]}',
                "stats": stats,
                "updateLog": [
                    {"timestamp": t + dt, "type": kind, "value": value} for dt, kind, value in log
                ],
            }
        }
    }


# ---- rtcstats (the library's format): delta-compressed stats, REST credential -------------
def rtcstats_delta(expired: bool = True) -> list[str]:
    """fileFormat 3 lines with absolute times, delta-compressed ``getstats``, a relayed call."""
    t = T0
    expiry = int(t / 1000) - 3600 if expired else int(t / 1000) + 3600
    lines = ["RTCStatsDump", json.dumps({"fileFormat": 3, "origin": "https://app.example.org"})]

    def line(method: str, pc: str | None, value: Any, at: float) -> None:
        lines.append(json.dumps([method, pc, value, at]))

    line(
        "create",
        "PC_0",
        {
            "iceServers": [
                {
                    "urls": ["turn:turn.example.org:443?transport=tcp"],
                    "username": f"{expiry}:alice",
                    "credential": "s3cr3t-Credential-Value",
                },
                {
                    "urls": "turns:turn.example.org:443?transport=tcp",
                    "username": "static-user",
                    "credential": "another-Secret-42",
                },
            ],
            "iceTransportPolicy": "relay",
        },
        t,
    )
    line("createOffer", "PC_0", None, t + 5)
    line("setLocalDescription", "PC_0", {"type": "offer", "sdp": "v=0\r\n"}, t + 8)
    line("onsignalingstatechange", "PC_0", "have-local-offer", t + 9)
    line("onicegatheringstatechange", "PC_0", "gathering", t + 10)
    line(
        "onicecandidate",
        "PC_0",
        {
            "candidate": "candidate:3 1 udp 41885439 203.0.113.50 49170 typ relay raddr"
            " 192.0.2.10 rport 50001 generation 0 ufrag aaaa",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        },
        t + 90,
    )
    line("setRemoteDescription", "PC_0", {"type": "answer", "sdp": "v=0\r\n"}, t + 200)
    line("onsignalingstatechange", "PC_0", "stable", t + 201)
    line(
        "addIceCandidate",
        "PC_0",
        {
            "candidate": "candidate:4 1 udp 41885439 203.0.113.51 49180 typ relay raddr"
            " 198.51.100.5 rport 40000 generation 0 ufrag bbbb",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        },
        t + 210,
    )
    line("oniceconnectionstatechange", "PC_0", "checking", t + 211)
    line("oniceconnectionstatechange", "PC_0", "connected", t + 400)
    line("onconnectionstatechange", "PC_0", "connected", t + 410)
    full = {
        "T01": {
            "type": "transport",
            "timestamp": t + 1000,
            "bytesSent": 1000,
            "bytesReceived": 900,
            "selectedCandidatePairId": "CP1",
        },
        "CP1": {
            "type": "candidate-pair",
            "timestamp": t + 1000,
            "localCandidateId": "L1",
            "remoteCandidateId": "R1",
            "state": "succeeded",
            "nominated": True,
            "bytesSent": 1000,
            "bytesReceived": 900,
            "requestsSent": 2,
            "responsesReceived": 2,
            "currentRoundTripTime": 0.05,
        },
        "L1": {
            "type": "local-candidate",
            "timestamp": t + 1000,
            "address": "203.0.113.50",
            "port": 49170,
            "protocol": "udp",
            "candidateType": "relay",
            "relayProtocol": "tcp",
            "url": "turn:turn.example.org:443?transport=tcp",
        },
        "R1": {
            "type": "remote-candidate",
            "timestamp": t + 1000,
            "address": "203.0.113.51",
            "port": 49180,
            "protocol": "udp",
            "candidateType": "relay",
        },
    }
    # rtcstats deltaCompression: first report complete (ids dropped), then only changes.
    first = {k: {kk: vv for kk, vv in v.items()} for k, v in full.items()}
    for v in first.values():
        v["timestamp"] = 0
    first["timestamp"] = t + 1000  # type: ignore[assignment]
    line("getstats", "PC_0", first, t + 1000)
    for i in range(1, 8):
        now = t + 1000 + i * 1000
        delta: dict[str, Any] = {
            "T01": {
                "timestamp": 0,
                "bytesSent": 1000 + i * 40_000,
                "bytesReceived": 900 + i * 39_000,
            },
            "CP1": {
                "timestamp": 0,
                "bytesSent": 1000 + i * 40_000,
                "bytesReceived": 900 + i * 39_000,
            },
            "timestamp": now,
        }
        line("getstats", "PC_0", delta, now)
    return lines


# ---- getStats() exports ------------------------------------------------------------------
def getstats_snapshot(as_map: bool = False) -> Any:
    """One Chromium snapshot of a connected host/srflx call."""
    t = T0
    objs = [
        {
            "id": "T01",
            "type": "transport",
            "timestamp": t,
            "selectedCandidatePairId": "CPa_b",
            "bytesSent": 50_000,
            "bytesReceived": 48_000,
            "iceState": "connected",
        },
        {
            "id": "CPa_b",
            "type": "candidate-pair",
            "timestamp": t,
            "transportId": "T01",
            "localCandidateId": "Ia",
            "remoteCandidateId": "Ib",
            "state": "succeeded",
            "nominated": True,
            "requestsSent": 4,
            "responsesReceived": 4,
            "bytesSent": 50_000,
            "bytesReceived": 48_000,
            "currentRoundTripTime": 0.031,
        },
        {
            "id": "Ia",
            "type": "local-candidate",
            "timestamp": t,
            "address": "1f4712db-ea17-4bcf-a596-105139dfd8bf.local",
            "port": 54400,
            "protocol": "udp",
            "candidateType": "host",
        },
        {
            "id": "Ib",
            "type": "remote-candidate",
            "timestamp": t,
            "address": "198.51.100.77",
            "port": 41000,
            "protocol": "udp",
            "candidateType": "srflx",
        },
    ]
    if as_map:
        return {o["id"]: o for o in objs}
    return objs


def getstats_firefox_failed() -> list[list[dict[str, Any]]]:
    """Snapshots over time (Firefox style: no transport, ``selected`` on pairs); ICE fails."""
    t = T0
    snaps = []
    for i in range(8):
        now = t + i * 1000
        snaps.append(
            [
                {
                    "id": "{pair-1}",
                    "type": "candidate-pair",
                    "timestamp": now,
                    "localCandidateId": "{l1}",
                    "remoteCandidateId": "{r1}",
                    "state": "in-progress" if i < 7 else "failed",
                    "nominated": False,
                    "selected": False,
                    "requestsSent": 3 * (i + 1),
                    "responsesReceived": 0,
                    "bytesSent": 0,
                    "bytesReceived": 0,
                },
                {
                    "id": "{l1}",
                    "type": "local-candidate",
                    "timestamp": now,
                    "address": "192.0.2.33",
                    "port": 60000,
                    "protocol": "udp",
                    "candidateType": "host",
                },
                {
                    "id": "{r1}",
                    "type": "remote-candidate",
                    "timestamp": now,
                    "address": "198.51.100.40",
                    "port": 60001,
                    "protocol": "udp",
                    "candidateType": "host",
                },
            ]
        )
    return snaps
