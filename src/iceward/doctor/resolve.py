"""Name resolution per host and address family (A and AAAA), each with a timeout.

Lookups run in daemon threads rather than the loop's executor: a resolver that hangs past the
timeout must not hold the process at exit (asyncio.run waits for its executor's threads).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from typing import Any

from iceward.doctor.evidence import Resolution

AddrInfo = list[tuple[Any, ...]]


def _getaddrinfo(host: str, family: int) -> asyncio.Future[AddrInfo]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[AddrInfo] = loop.create_future()

    def deliver(result: AddrInfo | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or [])

    def work() -> None:
        result: AddrInfo | None = None
        error: BaseException | None = None
        try:
            result = list(socket.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM))
        except OSError as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:
            pass  # the run ended (timed out) before the resolver answered

    threading.Thread(target=work, name=f"resolve-{host}", daemon=True).start()
    return future


async def _lookup(host: str, family: int, timeout: float) -> tuple[list[str], str | None]:
    try:
        infos = await asyncio.wait_for(_getaddrinfo(host, family), timeout)
    except TimeoutError:
        return [], f"no answer in {timeout:g} s"
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return [], "no such record"
        return [], str(exc.strerror or exc)
    except OSError as exc:
        return [], str(exc.strerror or exc)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return addresses, None


async def resolve(host: str, timeout: float) -> Resolution:
    """A and AAAA records of ``host`` (or the literal itself)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        result = Resolution(host, literal=True)
        (result.ipv4 if ip.version == 4 else result.ipv6).append(str(ip))
        return result
    start = time.perf_counter()
    (v4, err4), (v6, err6) = await asyncio.gather(
        _lookup(host, socket.AF_INET, timeout), _lookup(host, socket.AF_INET6, timeout)
    )
    ms = round((time.perf_counter() - start) * 1000, 1)
    return Resolution(host, False, v4, v6, err4, err6, ms)


async def resolve_all(hosts: list[str], timeout: float) -> list[Resolution]:
    unique = list(dict.fromkeys(h.lower() for h in hosts))
    return list(await asyncio.gather(*(resolve(h, timeout) for h in unique)))
