"""Step 5: the relay data path, which an Allocate alone does not test.

Two allocations on the same server permit and bind a channel toward each other's relayed address,
as two browsers relayed through one TURN server do. A sends numbered, timestamped pings over its
channel; they leave A's relay, enter B's relay port and reach B, which echoes them back the same
way. A ping that comes back crossed the relay port range twice, in both directions. Sizes alternate
between an audio-sized and a video-sized payload, so a path that drops only large packets shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import struct
import time

from iceward.diagnose.address import is_internal
from iceward.doctor.client import ProbeError, TurnError, TurnSession
from iceward.doctor.config import ServerUrl
from iceward.doctor.evidence import Datapath, fmt_addr
from iceward.doctor.probe import ProbeOptions, open_client
from iceward.stun.message import StunError

PINGS = 20
INTERVAL_S = 0.01
SIZES = (160, 1200)
MAGIC = b"iwdp"
_PING = struct.Struct("!4sId")
CHANNEL_A = 0x4000
CHANNEL_B = 0x4001


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def jitter(values: list[float]) -> float:
    """Mean absolute difference of consecutive round-trip times (RFC 3550's idea, unsmoothed)."""
    if len(values) < 2:
        return 0.0
    return sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1)


async def _allocated(url: ServerUrl, address: str, options: ProbeOptions) -> TurnSession:
    assert url.credential is not None
    client, _ = await open_client(url, address, options)
    session = TurnSession(client, url.credential.username, url.credential.credential)
    try:
        relayed = await session.allocate()
        if not relayed:
            raise ProbeError("Allocate succeeded without XOR-RELAYED-ADDRESS")
    except BaseException:
        await session.release()
        raise
    return session


async def run_datapath(
    url: ServerUrl, address: str, options: ProbeOptions, result: Datapath, pings: int = PINGS
) -> None:
    """Fill ``result`` (created by the caller so a run cut short still reports what it saw)."""
    sessions: list[TurnSession] = []
    try:
        outcomes = await asyncio.gather(
            *(_allocated(url, address, options) for _ in range(2)), return_exceptions=True
        )
        sessions = [s for s in outcomes if isinstance(s, TurnSession)]
        failed = [e for e in outcomes if isinstance(e, BaseException)]
        if failed:
            result.setup_error = f"two allocations: {failed[0]}"
            return
        a, b = sessions
        ra, rb = a.relayed[0], b.relayed[0]
        result.relayed_a, result.relayed_b = ra, rb
        result.transcript.append(
            f"two allocations: A relayed {fmt_addr(ra)}, B relayed {fmt_addr(rb)}"
        )
        try:
            await asyncio.gather(a.create_permission(rb), b.create_permission(ra))
            result.transcript.append("CreatePermission A→B and B→A: success")
            await asyncio.gather(a.channel_bind(CHANNEL_A, rb), b.channel_bind(CHANNEL_B, ra))
            result.transcript.append(
                f"ChannelBind A 0x{CHANNEL_A:04x}→B, B 0x{CHANNEL_B:04x}→A: success"
            )
        except TurnError as exc:
            result.setup_error = f"toward the other relayed address: {exc}"
            result.not_tested = exc.code == 403 and is_internal(rb[0])
            return
        await _ping(a, b, result, pings, min(options.timeout, 2.0))
    except (ProbeError, TurnError, StunError, OSError) as exc:
        result.setup_error = str(exc)
    finally:
        for session in sessions:
            await session.release()


async def _ping(a: TurnSession, b: TurnSession, result: Datapath, pings: int, wait: float) -> None:
    received: dict[int, float] = {}
    sizes: dict[int, int] = {}
    done = asyncio.Event()

    async def echo() -> None:
        while True:
            _, payload = await b.client.data.get()
            if payload.startswith(MAGIC):
                result.a_to_b += 1
                b.send_channel_data(CHANNEL_B, payload)

    async def collect() -> None:
        while True:
            _, payload = await a.client.data.get()
            if len(payload) < _PING.size or not payload.startswith(MAGIC):
                continue
            _, seq, sent_at = _PING.unpack_from(payload)
            if seq in sizes and seq not in received:
                received[seq] = (time.perf_counter() - sent_at) * 1000
                result.b_to_a += 1
                if len(received) == pings:
                    done.set()

    tasks = [asyncio.create_task(echo()), asyncio.create_task(collect())]
    try:
        for seq in range(pings):
            size = SIZES[seq % len(SIZES)]
            sizes[seq] = size
            head = _PING.pack(MAGIC, seq, time.perf_counter())
            a.send_channel_data(CHANNEL_A, head + b"\x00" * (size - len(head)))
            result.sent += 1
            await asyncio.sleep(INTERVAL_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    rtts = [received[s] for s in sorted(received)]
    result.rtt_ms = [round(r, 3) for r in rtts]
    for size in SIZES:
        lost = sum(1 for s, z in sizes.items() if z == size and s not in received)
        result.lost_by_size[str(size)] = lost
    if rtts:
        result.p50_ms = round(percentile(rtts, 0.5), 2)
        result.p95_ms = round(percentile(rtts, 0.95), 2)
        result.jitter_ms = round(jitter(rtts), 2)
    result.transcript.append(
        f"{result.sent} pings A→B: {result.a_to_b} reached B, {result.b_to_a} echoes came back"
    )
