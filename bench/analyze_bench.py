"""How fast ``iceward analyze`` reads a big webrtc-internals dump (target: 50 MB in under 5 s).

    .venv/bin/python bench/analyze_bench.py              # ~50 MB dump, plain JSON
    .venv/bin/python bench/analyze_bench.py --gzip       # the same, gzip (as Chromium saves it)
    .venv/bin/python bench/analyze_bench.py --size-mb 200

The dump is synthesized in Chromium 156's format: many PeerConnections of a long video call, each
stats series at webrtc-internals' 1000-point buffer, with everything a real dump holds
(candidate pairs, candidates, transports, inbound/outbound RTP with their dozens of counters,
codecs, certificates, media sources, computed ``[...]`` series and an event log with SDPs). The
analysis runs in a fresh child process so its peak RSS is its own: load, parse, rules, the JSON
document and the terminal report (rendered to nowhere).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

POINTS = 1000
T0 = 1_795_000_000_000.0

RTP_ATTRS = [
    "ssrc",
    "kind",
    "transportId",
    "codecId",
    "mid",
    "packetsLost",
    "jitter",
    "bytesReceived",
    "packetsReceived",
    "headerBytesReceived",
    "lastPacketReceivedTimestamp",
    "jitterBufferDelay",
    "jitterBufferTargetDelay",
    "jitterBufferMinimumDelay",
    "jitterBufferEmittedCount",
    "totalSamplesReceived",
    "concealedSamples",
    "silentConcealedSamples",
    "concealmentEvents",
    "insertedSamplesForDeceleration",
    "removedSamplesForAcceleration",
    "audioLevel",
    "totalAudioEnergy",
    "totalSamplesDuration",
    "framesReceived",
    "frameWidth",
    "frameHeight",
    "framesPerSecond",
    "framesDecoded",
    "keyFramesDecoded",
    "framesDropped",
    "totalDecodeTime",
    "totalProcessingDelay",
    "totalAssemblyTime",
    "framesAssembledFromMultiplePackets",
    "totalInterFrameDelay",
    "totalSquaredInterFrameDelay",
    "pauseCount",
    "totalPausesDuration",
    "freezeCount",
    "totalFreezesDuration",
    "firCount",
    "pliCount",
    "nackCount",
    "qpSum",
    "decoderImplementation",
    "powerEfficientDecoder",
    "fecPacketsReceived",
    "fecPacketsDiscarded",
    "retransmittedPacketsReceived",
    "retransmittedBytesReceived",
    "packetsDiscarded",
]
OUT_ATTRS = [
    "ssrc",
    "kind",
    "transportId",
    "codecId",
    "mid",
    "mediaSourceId",
    "remoteId",
    "packetsSent",
    "bytesSent",
    "headerBytesSent",
    "retransmittedPacketsSent",
    "retransmittedBytesSent",
    "targetBitrate",
    "totalEncodedBytesTarget",
    "frameWidth",
    "frameHeight",
    "framesPerSecond",
    "framesSent",
    "hugeFramesSent",
    "framesEncoded",
    "keyFramesEncoded",
    "qpSum",
    "totalEncodeTime",
    "totalPacketSendDelay",
    "qualityLimitationReason",
    "qualityLimitationResolutionChanges",
    "nackCount",
    "firCount",
    "pliCount",
    "encoderImplementation",
    "powerEfficientEncoder",
    "active",
    "scalabilityMode",
]
PAIR_ATTRS = [
    "transportId",
    "localCandidateId",
    "remoteCandidateId",
    "state",
    "priority",
    "nominated",
    "writable",
    "packetsSent",
    "packetsReceived",
    "bytesSent",
    "bytesReceived",
    "totalRoundTripTime",
    "currentRoundTripTime",
    "availableOutgoingBitrate",
    "requestsReceived",
    "requestsSent",
    "responsesReceived",
    "responsesSent",
    "consentRequestsSent",
    "packetsDiscardedOnSend",
    "bytesDiscardedOnSend",
    "lastPacketReceivedTimestamp",
    "lastPacketSentTimestamp",
]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _values(attr: str, i: int, rng: random.Random) -> list[Any]:
    if attr in ("kind",):
        return ["video" if i % 2 else "audio"] * POINTS
    if attr in ("state",):
        return ["succeeded"] * POINTS
    if attr in ("nominated", "writable", "active", "powerEfficientDecoder"):
        return [True] * POINTS
    if attr.endswith("Id") or attr in ("mid", "decoderImplementation", "encoderImplementation"):
        return [f"{attr[:2].upper()}{i}"] * POINTS
    if attr in ("qualityLimitationReason", "scalabilityMode"):
        return ["none"] * POINTS
    if "Timestamp" in attr:
        return [T0 + k * 1000 - rng.randint(0, 40) for k in range(POINTS)]
    if attr in ("jitter", "audioLevel", "currentRoundTripTime", "framesPerSecond"):
        return [round(rng.random() / 10, 6) for _ in range(POINTS)]
    rate = rng.randint(5, 120_000)
    return [k * rate + rng.randint(0, rate) for k in range(POINTS)]


def synthesize_pc(index: int, rng: random.Random) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    start = T0
    times = [start + k * 1000.0 + rng.random() for k in range(POINTS)]

    def add(oid: str, stats_type: str, attrs: dict[str, list[Any]]) -> None:
        for attr, values in {**attrs, "timestamp": times}.items():
            stats[f"{oid}-{attr}"] = {
                "startTime": _iso(start),
                "endTime": _iso(times[-1]),
                "statsType": stats_type,
                "values": json.dumps(values, separators=(",", ":")),
            }

    cands = []
    for side in ("local", "remote"):
        for k, ctype in enumerate(("host", "srflx", "relay", "host")):
            oid = f"I{side[0]}{index}x{k}"
            cands.append(oid)
            addr = f"198.51.100.{k + 1}" if ctype != "host" else f"{rng.getrandbits(64):x}.local"
            attrs = {
                "address": [addr] * POINTS,
                "candidateType": [ctype] * POINTS,
                "port": [40000 + k] * POINTS,
                "protocol": ["udp"] * POINTS,
                "priority": [2122260223 - k] * POINTS,
                "transportId": ["T01"] * POINTS,
                "isRemote": [side == "remote"] * POINTS,
                "usernameFragment": ["abcd"] * POINTS,
                "foundation": [str(1000 + k)] * POINTS,
            }
            if ctype == "relay" and side == "local":
                attrs["relayProtocol"] = ["udp"] * POINTS
                attrs["url"] = ["turn:turn.example.org:3478?transport=udp"] * POINTS
            add(oid, f"{side}-candidate", attrs)
    pairs = []
    for k in range(6):
        oid = f"CP{index}p{k}"
        pairs.append(oid)
        attrs = {a: _values(a, k, rng) for a in PAIR_ATTRS}
        attrs["localCandidateId"] = [cands[k % 4]] * POINTS
        attrs["remoteCandidateId"] = [cands[4 + k % 4]] * POINTS
        add(oid, "candidate-pair", attrs)
        for computed in ("[bytesSent_in_bits/s]", "[bytesReceived_in_bits/s]"):
            stats[f"{oid}-{computed}"] = {
                "startTime": _iso(times[1]),
                "endTime": _iso(times[-1]),
                "statsType": "candidate-pair",
                "values": json.dumps([rng.randint(0, 2_000_000) for _ in range(POINTS - 1)]),
            }
    add(
        "T01",
        "transport",
        {
            "bytesSent": _values("bytesSent", 0, rng),
            "bytesReceived": _values("bytesReceived", 1, rng),
            "packetsSent": _values("packetsSent", 2, rng),
            "packetsReceived": _values("packetsReceived", 3, rng),
            "selectedCandidatePairId": [pairs[0]] * POINTS,
            "selectedCandidatePairChanges": [1] * POINTS,
            "iceState": ["connected"] * POINTS,
            "dtlsState": ["connected"] * POINTS,
            "dtlsCipher": ["TLS_AES_128_GCM_SHA256"] * POINTS,
            "srtpCipher": ["AES_CM_128_HMAC_SHA1_80"] * POINTS,
            "tlsVersion": ["FEFD"] * POINTS,
            "iceRole": ["controlling"] * POINTS,
        },
    )
    for k in range(4):
        add(
            f"IT01{'AV'[k % 2]}{index}{k}",
            "inbound-rtp",
            {a: _values(a, k, rng) for a in RTP_ATTRS},
        )
        add(
            f"OT01{'AV'[k % 2]}{index}{k}",
            "outbound-rtp",
            {a: _values(a, k, rng) for a in OUT_ATTRS},
        )
    for k in range(4):
        add(
            f"COT01_{100 + k}",
            "codec",
            {
                "mimeType": ["video/VP8"] * POINTS,
                "payloadType": [100 + k] * POINTS,
                "clockRate": [90000] * POINTS,
                "transportId": ["T01"] * POINTS,
            },
        )
    for _ in range(2):
        fingerprint = ":".join(f"{rng.getrandbits(8):02X}" for _ in range(32))
        add(
            f"CF{fingerprint}",
            "certificate",
            {
                "fingerprint": [fingerprint] * POINTS,
                "fingerprintAlgorithm": ["sha-256"] * POINTS,
                "base64Certificate": ["MIIBFTCBvKADAgECAghYQGn47fOzgTAKBggqhkjOPQQDAjAR"] * POINTS,
            },
        )
    sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" + "a=rtpmap:96 VP8/90000\r\n" * 120
    log: list[dict[str, Any]] = [
        {"timestamp": T0 - 2000, "type": "addTransceiver", "value": '{"kind":"video"}'},
        {"timestamp": T0 - 1990, "type": "createOffer", "value": "{}"},
        {
            "timestamp": T0 - 1980,
            "type": "setLocalDescription",
            "value": json.dumps({"type": "offer", "sdp": sdp}),
        },
        {"timestamp": T0 - 1970, "type": "onsignalingstatechange", "value": '"have-local-offer"'},
        {
            "timestamp": T0 - 1500,
            "type": "setRemoteDescription",
            "value": json.dumps({"type": "answer", "sdp": sdp}),
        },
        {"timestamp": T0 - 1490, "type": "onsignalingstatechange", "value": '"stable"'},
        {"timestamp": T0 - 1400, "type": "oniceconnectionstatechange", "value": '"checking"'},
        {"timestamp": T0 - 1200, "type": "oniceconnectionstatechange", "value": '"connected"'},
        {"timestamp": T0 - 1190, "type": "onconnectionstatechange", "value": '"connected"'},
    ]
    return {
        "pid": 7,
        "rtcConfiguration": json.dumps(
            {
                "iceServers": [{"urls": ["turn:turn.example.org:3478?transport=udp"]}],
                "iceTransportPolicy": "all",
            }
        ),
        "url": "https://app.example.org/room",
        "stats": stats,
        "updateLog": log,
    }


def synthesize(path: Path, size_mb: float, compress: bool) -> tuple[int, int]:
    """Write a dump of about ``size_mb`` MB; returns (PeerConnections, bytes written)."""
    rng = random.Random(1234)
    one = json.dumps(synthesize_pc(0, rng))
    count = max(1, round(size_mb * 1e6 / len(one)))
    pcs = {f"7-{i + 1}": synthesize_pc(i, rng) for i in range(count)}
    data = json.dumps(
        {
            "getUserMedia": [],
            "PeerConnections": pcs,
            "UserAgent": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0.0.0",
            "timestamp": T0 + POINTS * 1000,
        }
    ).encode()
    path.write_bytes(gzip.compress(data, compresslevel=6) if compress else data)
    return count, len(data)


CHILD = r"""
import io, json, sys, time

def hwm_kb():
    # VmHWM is this process's own peak RSS (ru_maxrss would include the parent's, from fork).
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

from pathlib import Path
from rich.console import Console
from iceward.analyze.api import analyze_path
from iceward.analyze.report import render, to_json
imported = hwm_kb()
t = time.perf_counter()
analysis = analyze_path(Path(sys.argv[1]))
t_analysis = time.perf_counter() - t
doc = json.dumps(to_json(analysis))
render(analysis, Console(file=io.StringIO(), width=120))
total = time.perf_counter() - t
print(json.dumps({
    "analysis_s": t_analysis, "total_s": total,
    "maxrss_kb": hwm_kb(), "imports_kb": imported,
    "pcs": len(analysis.reports), "findings": [f.code for f in analysis.findings],
    "json_bytes": len(doc),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--gzip", action="store_true", help="write the dump gzip-compressed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="also keep the synthesized dump here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iceward-bench-") as tmp:
        path = Path(tmp) / ("dump.json.gz" if args.gzip else "dump.json")
        t = time.perf_counter()
        count, raw = synthesize(path, args.size_mb, args.gzip)
        print(
            f"synthesized {count} PeerConnections, {raw / 1e6:.1f} MB JSON"
            f" ({path.stat().st_size / 1e6:.1f} MB on disk) in {time.perf_counter() - t:.1f} s"
        )
        if args.keep:
            args.keep.write_bytes(path.read_bytes())
        results = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
            )
            results.append(json.loads(out.stdout))
        best = min(results, key=lambda r: r["total_s"])
        every = ", ".join(f"{r['total_s']:.2f}" for r in results)
        print(
            f"analysis (load+parse+rules): {best['analysis_s']:.2f} s;"
            f" with JSON document and terminal report: {best['total_s']:.2f} s"
            f" (best of {args.runs}; all: {every})"
        )
        print(
            f"peak RSS {best['maxrss_kb'] / 1024:.0f} MiB"
            f" (of which interpreter and imports {best['imports_kb'] / 1024:.0f} MiB);"
            f" {best['pcs']} PCs, findings {sorted(set(best['findings']))},"
            f" JSON {best['json_bytes'] / 1e6:.1f} MB"
        )
        ok = best["total_s"] < 5.0
        print("target < 5 s:", "met" if ok else "MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
