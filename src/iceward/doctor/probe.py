"""Steps 3 and 4 of the ladder for one URL toward one address: STUN Binding, then TURN Allocate.

A ``turns:`` server whose certificate does not verify is reported as such and then probed again
without verification, so the report also says whether TURN over TLS works once the certificate is
fixed.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

from iceward.doctor.certs import describe, insecure_context, verify_message
from iceward.doctor.client import ProbeError, StunClient, TurnError, TurnSession
from iceward.doctor.config import ServerUrl
from iceward.doctor.evidence import Probe, TlsInfo, fmt_addr


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    timeout: float
    tls: ssl.SSLContext
    insecure: bool


async def open_client(
    url: ServerUrl, address: str, options: ProbeOptions
) -> tuple[StunClient, TlsInfo | None]:
    """Connect over the URL's transport; for TLS also return what the certificate says."""
    target = (address, url.port)
    if url.transport != "tls":
        return await StunClient.connect(url.transport, target, options.timeout), None
    hostname = None if url.host_literal else url.host
    try:
        client = await StunClient.connect(
            "tls", target, options.timeout, options.tls, hostname or address
        )
    except ssl.SSLCertVerificationError as exc:
        reason = verify_message(exc)
        client = await StunClient.connect(
            "tls", target, options.timeout, insecure_context(), hostname or address
        )
        link = client.link
        return client, describe(
            link.peercert_der if link else None,
            verified=False,
            error=reason,
            checked=True,
            version=link.tls_version if link else "",
        )
    link = client.link
    return client, describe(
        link.peercert_der if link else None,
        verified=not options.insecure,
        error=None,
        checked=not options.insecure,
        version=link.tls_version if link else "",
    )


async def run_probe(url: ServerUrl, probe: Probe, options: ProbeOptions) -> None:
    """Fill ``probe`` (created by the caller, so a probe cut short still reports what it saw)."""
    assert probe.address is not None
    try:
        client, probe.tls = await open_client(url, probe.address, options)
    except ProbeError as exc:
        probe.error = str(exc)
        probe.outcome = "skipped" if "no route from here" in probe.error else "unreachable"
        return
    probe.connect_ms = None if url.transport == "udp" else _round(client.connect_ms)
    session: TurnSession | None = None
    try:
        try:
            mapped, rtt = await client.binding()
            probe.mapped, probe.stun_rtt_ms = mapped, _round(rtt)
            probe.transcript.append(f"Binding → success: mapped {fmt_addr(mapped)}, {rtt:.1f} ms")
        except TurnError as exc:  # answered, just not with a mapped address
            probe.stun_error = str(exc)
            probe.transcript.append(str(exc))
        except ProbeError as exc:
            probe.stun_error = f"Binding: {exc}"
            probe.error = probe.stun_error
            probe.outcome = "unreachable"
            probe.transcript.append(probe.stun_error)
            return
        if not url.is_turn:
            probe.outcome = "ok" if probe.mapped is not None else "refused"
            probe.error = None if probe.mapped is not None else probe.stun_error
            return
        assert url.credential is not None
        session = TurnSession(client, url.credential.username, url.credential.credential)
        start = time.perf_counter()
        try:
            relayed = await session.allocate()
        except TurnError as exc:
            probe.error_code = exc.code
            probe.error = str(exc)
            refused_credential = exc.code == 441 or (exc.code == 401 and exc.signed)
            probe.outcome = "auth" if refused_credential else "refused"
        except ProbeError as exc:
            probe.error = f"Allocate: {exc}"
            probe.outcome = "unreachable"
        else:
            probe.outcome = "ok"
            probe.allocate_ms = _round((time.perf_counter() - start) * 1000)
            probe.relayed = relayed
            probe.allocate_mapped = session.mapped
            probe.lifetime = session.lifetime
        finally:
            probe.software = session.software
            probe.transcript.extend(session.transcript)
    finally:
        if session is not None:
            await session.release()
        else:
            client.close()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
