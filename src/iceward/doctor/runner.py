"""The ladder, in order: lint, resolve, STUN and TURN per URL, data path, security.

Steps run in parallel where that is safe (every URL at once, every server's data path at once) and
each stage has a budget, so a run is bounded whatever the network does: a probe cut short keeps
what it saw and says it ran out of time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from iceward.doctor.certs import client_context
from iceward.doctor.config import IceConfig, ServerUrl, unique_urls
from iceward.doctor.datapath import run_datapath
from iceward.doctor.evidence import (
    Datapath,
    Evidence,
    Probe,
    Resolution,
    SecurityScan,
    Source,
    fmt_addr,
)
from iceward.doctor.probe import ProbeOptions, run_probe
from iceward.doctor.resolve import resolve_all
from iceward.doctor.security import run_security

#: Probes at once: enough for any real config, few enough not to look like a flood.
PARALLEL = 16
_TRANSPORT_PREFERENCE = {"udp": 0, "tcp": 1, "tls": 2}


class ProgressSink(Protocol):
    def stage(self, name: str) -> None: ...

    def line(self, text: str, ok: bool | None = None) -> None: ...


class NoProgress:
    def stage(self, name: str) -> None:
        pass

    def line(self, text: str, ok: bool | None = None) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Options:
    timeout: float = 5.0
    ca_file: Path | None = None
    insecure: bool = False
    security: bool = False


async def _bounded(
    jobs: Sequence[Callable[[], Awaitable[None]]], budget: float, on_timeout: Callable[[int], None]
) -> None:
    """Run jobs (at most PARALLEL at once) for at most ``budget`` s; report the ones cut short."""
    gate = asyncio.Semaphore(PARALLEL)

    async def gated(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    tasks = [asyncio.create_task(gated(job)) for job in jobs]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for index, task in enumerate(tasks):
        if task in pending:
            on_timeout(index)
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug, not a network result


def implied_tcp_urls(config: IceConfig) -> list[ServerUrl]:
    """For a UDP-only config: the same servers over TCP, to say whether adding them would work."""
    turn = config.turn_urls
    if not turn or any(u.transport != "udp" for u in turn):
        return []
    seen: dict[tuple[str, int, int], ServerUrl] = {}
    for url in turn:
        key = (url.host.lower(), url.port, url.server_index)
        if key not in seen:
            raw = f"turn:{url.endpoint}?transport=tcp"
            seen[key] = replace(url, raw=raw, transport="tcp")
    return list(seen.values())


def _probe_line(probe: Probe) -> tuple[str, bool | None]:
    where = f"{probe.url} → {probe.target}"
    if probe.implied:
        where += " (not in the config)"
    if probe.outcome == "ok":
        if probe.relayed:
            relayed = ", ".join(fmt_addr(r) for r in probe.relayed)
            return f"{where}: allocated, relayed {relayed}", True
        return (
            f"{where}: mapped {probe.mapped[0] if probe.mapped else '?'} ({probe.stun_rtt_ms} ms)",
            True,
        )
    return f"{where}: {probe.error}", False


async def run_ladder(
    config: IceConfig, source: Source, options: Options, progress: ProgressSink | None = None
) -> Evidence:
    progress = progress or NoProgress()
    started = time.perf_counter()
    evidence = Evidence(source=source, config=config, now=time.time(), insecure=options.insecure)
    t = options.timeout
    probe_options = ProbeOptions(
        t, client_context(options.ca_file, options.insecure), options.insecure
    )

    progress.stage("resolving names")
    hosts = [u.host for u in config.urls]
    evidence.resolutions = await resolve_all(hosts, t)
    by_host = {r.host: r for r in evidence.resolutions}
    for res in evidence.resolutions:
        if res.literal:
            progress.line(f"{res.host}: an address, nothing to resolve")
            continue
        found = res.addresses
        progress.line(
            f"{res.host}: {', '.join(found) if found else 'does not resolve'}", bool(found)
        )

    progress.stage("probing STUN and TURN")
    pairs = _targets(config.urls, by_host, implied=False)
    pairs += _targets(implied_tcp_urls(config), by_host, implied=True)
    evidence.probes = [p for _, p in pairs]

    def job(url: ServerUrl, probe: Probe) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await run_probe(url, probe, probe_options)
            progress.line(*_probe_line(probe))

        return run

    runnable = [(u, p) for u, p in pairs if p.address is not None]
    for _, probe in pairs:
        if probe.address is None:
            progress.line(*_probe_line(probe))

    def probe_timeout(index: int) -> None:
        probe = runnable[index][1]
        probe.outcome = "unreachable"
        probe.error = (probe.error or "") + f" (probe did not finish in {4 * t + 1:g} s)"

    await _bounded([job(u, p) for u, p in runnable], 4 * t + 1, probe_timeout)

    stage_jobs: list[Callable[[], Awaitable[None]]] = []
    best = _best_per_server(pairs)
    if best:
        progress.stage(
            "testing the relay data path" + (" and peer policy" if options.security else "")
        )
    for url, probe in best:
        assert probe.address is not None
        dp = Datapath(url.raw, url.transport, url.server_index)
        evidence.datapaths.append(dp)
        stage_jobs.append(_datapath_job(url, probe.address, probe_options, dp, progress))
    if options.security:
        evidence.security = []
        covered = {url.server_index for url, _ in best}
        for url in config.turn_urls:
            if url.server_index not in covered:
                covered.add(url.server_index)
                evidence.security.append(
                    SecurityScan(
                        url.raw,
                        url.server_index,
                        "not tested: no allocation succeeded with this entry's URLs and credential",
                    )
                )
        for url, probe in best:
            assert probe.address is not None
            scan = SecurityScan(url.raw, url.server_index)
            evidence.security.append(scan)
            stage_jobs.append(_security_job(url, probe.address, probe_options, scan, progress))

    def stage_timeout(index: int) -> None:
        results: list[Datapath | SecurityScan] = [*evidence.datapaths, *(evidence.security or [])]
        item = results[index]
        if isinstance(item, Datapath):
            item.setup_error = item.setup_error or f"did not finish in {5 * t + 2:g} s"
        else:
            item.error = item.error or f"did not finish in {5 * t + 2:g} s"

    await _bounded(stage_jobs, 5 * t + 2, stage_timeout)
    evidence.elapsed_s = round(time.perf_counter() - started, 2)
    return evidence


def _datapath_job(
    url: ServerUrl, address: str, options: ProbeOptions, dp: Datapath, progress: ProgressSink
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await run_datapath(url, address, options, dp)
        if dp.setup_error:
            progress.line(
                f"data path via {url.raw}: {dp.setup_error}", None if dp.not_tested else False
            )
        elif dp.blocked:
            progress.line(
                f"data path via {url.raw}: {dp.a_to_b}/{dp.sent} packets crossed, "
                f"{dp.b_to_a} came back",
                False,
            )
        else:
            progress.line(
                f"data path via {url.raw}: {len(dp.rtt_ms)}/{dp.sent} round trips, "
                f"p50 {dp.p50_ms} ms",
                True,
            )

    return run


def _security_job(
    url: ServerUrl, address: str, options: ProbeOptions, scan: SecurityScan, progress: ProgressSink
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await run_security(url, address, options, scan)
        if scan.error:
            progress.line(f"peer policy via {url.raw}: {scan.error}", None)
        else:
            accepted = scan.accepted
            progress.line(
                f"peer policy via {url.raw}: {len(accepted)} of {len(scan.checks)} "
                "internal targets accepted",
                not accepted,
            )

    return run


def _targets(
    urls: list[ServerUrl], by_host: dict[str, Resolution], implied: bool
) -> list[tuple[ServerUrl, Probe]]:
    """One probe per URL and resolved address family (the first address of each)."""
    out = []
    for url in unique_urls(urls):
        res = by_host.get(url.host.lower())
        families = [(4, res.ipv4), (6, res.ipv6)] if res else []
        found = [(family, addrs[0]) for family, addrs in families if addrs]
        if implied:
            found = found[:1]
        if not found:
            probe = Probe(
                url.raw,
                url.scheme,
                url.transport,
                url.server_index,
                None,
                0,
                implied,
                outcome="unreachable",
            )
            if res is not None:
                probe.error = (
                    f"DNS: {url.host} does not resolve (A: {res.error4 or 'none'}; "
                    f"AAAA: {res.error6 or 'none'})"
                )
            out.append((url, probe))
            continue
        for family, address in found:
            out.append(
                (
                    url,
                    Probe(
                        url.raw,
                        url.scheme,
                        url.transport,
                        url.server_index,
                        address,
                        family,
                        implied,
                    ),
                )
            )
    return out


def _best_per_server(pairs: list[tuple[ServerUrl, Probe]]) -> list[tuple[ServerUrl, Probe]]:
    """Per iceServers entry, the allocation to test the data path with: UDP first, IPv4 first."""
    best: dict[int, tuple[ServerUrl, Probe]] = {}
    for url, probe in pairs:
        if not url.is_turn or probe.outcome != "ok" or probe.address is None:
            continue
        rank = (probe.implied, _TRANSPORT_PREFERENCE[url.transport], probe.family)
        current = best.get(url.server_index)
        if current is None or rank < (
            current[1].implied,
            _TRANSPORT_PREFERENCE[current[0].transport],
            current[1].family,
        ):
            best[url.server_index] = (url, probe)
    return [best[k] for k in sorted(best)]
