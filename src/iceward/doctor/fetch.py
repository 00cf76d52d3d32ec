"""Where the configuration comes from: a file, stdin, inline JSON, or the app's credentials URL.

Fetching from the URL gets the config exactly as the app's backend hands it to browsers (a wrong
config from the server is a root cause of its own); the HTTP Date header gives the backend's clock,
which TURN REST credentials depend on.
"""

from __future__ import annotations

import email.utils
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from iceward.doctor.evidence import Source

MAX_BODY = 1 << 20


class InputError(Exception):
    """The input cannot be read at all (exit 2): the message is one clear line."""


def read_ice_servers(value: str) -> tuple[str, Source]:
    """``-`` (stdin), inline JSON (starts with ``[`` or ``{``) or a file path."""
    stripped = value.strip()
    if value == "-":
        return sys.stdin.read(), Source("stdin", "-")
    if stripped.startswith(("[", "{")):
        return value, Source("inline", "--ice-servers")
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8"), Source("file", str(path))
    except FileNotFoundError:
        raise InputError(
            f"--ice-servers: no such file: {value} (give a file, '-' for stdin, or inline JSON)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise InputError(f"--ice-servers: cannot read {value}: {reason}") from None


def parse_headers(headers: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise InputError(f"--header {header!r}: expected 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def fetch_config(
    url: str, headers: list[str], timeout: float, tls: ssl.SSLContext
) -> tuple[str, Source]:
    """GET the credentials URL; any 2xx body is the config (judged later), anything else exits 2."""
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--credentials-url must be http:// or https://, got {url!r}")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", **parse_headers(headers)}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:
            body = response.read(MAX_BODY)
            source = Source("url", url, response.status, response.headers.get("Content-Type"))
            source.clock_skew_s = _skew(response.headers.get("Date"))
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        hint = " (does it need --header 'Authorization: ...'?)" if exc.code in (401, 403) else ""
        raise InputError(
            f"GET {url}: HTTP {exc.code} {exc.reason}{hint}"
            + (f": {detail[:200]}" if detail else "")
        ) from None
    except urllib.error.URLError as exc:
        raise InputError(f"GET {url}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise InputError(f"GET {url}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"GET {url}: {exc}") from None
    return body.decode("utf-8", "replace"), source


def _skew(date_header: str | None) -> float | None:
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return None
    return round(server - time.time(), 1)
