"""Where the configuration comes from: a file, stdin, inline JSON, or the app's credentials URL.

Fetching from the URL gets the config exactly as the app's backend hands it to browsers (a wrong
config from the server is a root cause of its own); the HTTP Date header gives the backend's clock,
which TURN REST credentials depend on.
"""

from __future__ import annotations

import email.utils
import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
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


#: Query parameters and headers whose values are secrets: shown with every character masked.
_SECRET_NAME = re.compile(r"key|token|secret|auth|sig|pass|cred|session|jwt|cookie|code", re.I)


def mask_value(value: str, name: str = "") -> str:
    """A value as reports show it: a secret-looking ``name`` hides it all, anything else keeps
    its first 4 characters (as credentials do); short values stay."""
    if _SECRET_NAME.search(name):
        return f"…({len(value)} chars)" if value else value
    return f"{value[:4]}…({len(value)} chars)" if len(value) > 4 else value


def masked_url(url: str) -> str:
    """``url`` with a userinfo password and every query value masked (API keys travel there)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0] + ("?…" if "?" in url else "")
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:{mask_value(parts.password, 'pass')}@{host}"
    query = "&".join(
        f"{name}={mask_value(urllib.parse.unquote_plus(value), name)}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def masked_header(name: str, value: str) -> str:
    """``Name: value`` with a secret value masked; an auth scheme (``Bearer``) stays readable."""
    if not _SECRET_NAME.search(name):
        return f"{name}: {value}"
    scheme, sep, rest = value.partition(" ")
    if sep and rest and scheme.isalpha():
        return f"{name}: {scheme} {mask_value(rest.strip(), name)}"
    return f"{name}: {mask_value(value, name)}"


def parse_headers(headers: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            shown = header.split(None, 1)[0][:40] if header.strip() else ""
            raise InputError(
                f"--header {shown!r}…: expected 'Name: value'"
                if len(shown) < len(header)
                else f"--header {header!r}: expected 'Name: value'"
            )
        out[name.strip()] = value.strip()
    return out


def request_body(method: str, data: str | None) -> bytes | None:
    """The ``--data`` JSON (inline or ``@FILE``) as bytes; checked before anything is sent."""
    if data is None:
        return b"" if method == "POST" else None
    if method != "POST":
        raise InputError("--data is sent with --method POST only")
    text = data
    if data.startswith("@"):
        try:
            text = Path(data[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise InputError(f"--data {data}: cannot read it: {reason}") from None
    try:
        json.loads(text)
    except ValueError as exc:
        raise InputError(f"--data: not JSON ({exc})") from None
    return text.encode()


def fetch_config(
    url: str,
    headers: list[str],
    timeout: float,
    tls: ssl.SSLContext,
    method: str = "GET",
    data: str | None = None,
) -> tuple[str, Source]:
    """Ask the credentials URL (GET, or POST with a JSON body) for the config: any 2xx body is
    the config (judged later), anything else exits 2. API keys are masked wherever it is shown."""
    shown = masked_url(url)
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--credentials-url must be http:// or https://, got {shown!r}")
    method = method.upper()
    if method not in ("GET", "POST"):
        raise InputError(f"--method must be GET or POST, got {method!r}")
    sent = {"Accept": "application/json", **parse_headers(headers)}
    body = request_body(method, data)
    if body and not any(k.lower() == "content-type" for k in sent):
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:
            content = response.read(MAX_BODY)
            source = Source("url", shown, response.status, response.headers.get("Content-Type"))
            source.clock_skew_s = _skew(response.headers.get("Date"))
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        hint = ""
        if exc.code in (401, 403):
            hint = " (does it need --header 'Authorization: ...'?)"
        elif exc.code == 405:
            allowed = exc.headers.get("Allow", "")
            if method == "GET" and (not allowed or "POST" in allowed.upper()):
                hint = " (the endpoint wants POST: use --method POST --data JSON)"
            elif allowed:
                hint = f" (it allows {allowed})"
        raise InputError(
            f"{method} {shown}: HTTP {exc.code} {exc.reason}{hint}"
            + (f": {detail[:200]}" if detail else "")
        ) from None
    except urllib.error.URLError as exc:
        raise InputError(f"{method} {shown}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise InputError(f"{method} {shown}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"{method} {shown}: {exc}") from None
    source.method = method
    source.headers = [masked_header(k, v) for k, v in sent.items() if k != "Accept"]
    return content.decode("utf-8", "replace"), source


def _skew(date_header: str | None) -> float | None:
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return None
    return round(server - time.time(), 1)
