"""Posting quota notices: a signed POST, retried with backoff until the receiver answers 2xx."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request

from iceward.usage.quotas import SIGNATURE_HEADER, sign

log = logging.getLogger("iceward.usage")

#: Seconds waited before each retry: five attempts over about half a minute.
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)
TIMEOUT = 5.0


def _post(url: str, body: bytes, signature: str) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        return int(answer.status)


async def deliver(url: str, secret: str, body: bytes, backoff: tuple[float, ...] = BACKOFF) -> bool:
    """POST ``body`` to ``url`` until a 2xx answer or the retries run out; True if delivered.
    Each attempt is signed afresh (its own timestamp)."""
    for attempt, wait in enumerate((0.0, *backoff)):
        if wait:
            await asyncio.sleep(wait)
        signature = sign(secret, body, int(time.time()))
        try:
            status = await asyncio.to_thread(_post, url, body, signature)
            if 200 <= status < 300:
                return True
            problem = f"answered {status}"
        except urllib.error.HTTPError as exc:
            problem = f"answered {exc.code}"
        except (OSError, ValueError) as exc:
            problem = str(exc)
        log.warning("quota webhook %s: attempt %d %s", url, attempt + 1, problem)
    log.error("quota webhook %s: gave up after %d attempts", url, len(backoff) + 1)
    return False
