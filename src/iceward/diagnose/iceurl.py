"""STUN/TURN URLs: one parser for the doctor, the analyzer and the test page.

Syntax is RFC 7064 (``stun:``/``stuns:``) and RFC 7065 (``turn:``/``turns:`` with
``?transport=udp|tcp``). Two readings share one grammar:

- :func:`parse_url` reads as a browser does: what makes ``new RTCPeerConnection()`` throw raises
  :class:`UrlError` with the reason in plain words (the doctor lints a config with it).
- :func:`read_url` reads URLs a browser already used (a dump's configuration, an
  ``icecandidateerror``'s url): it never raises, skips the legacy ``user@host`` part, and falls
  back to the scheme's default port and transport where the text does not say.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, cast

Scheme = Literal["stun", "stuns", "turn", "turns"]
Transport = Literal["udp", "tcp", "tls"]

DEFAULT_PORTS: dict[str, int] = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}
SCHEMES = tuple(DEFAULT_PORTS)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)


@dataclass(frozen=True, slots=True)
class IceUrl:
    """One STUN/TURN URL, parsed; ``transport`` is how the client reaches the server."""

    raw: str
    scheme: Scheme
    #: Without brackets; empty when :func:`read_url` found none.
    host: str
    #: The scheme's default (3478, or 5349 for stuns:/turns:) when the URL names none.
    port: int
    transport: Transport

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    @property
    def host_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class UrlError(ValueError):
    """A URL a browser would refuse; the message says why in plain words."""


def parse_url(raw: str) -> IceUrl:
    """Parse one STUN/TURN URL as a browser does; raise :class:`UrlError` with the reason."""
    text = raw.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise UrlError(
            f"unknown scheme {scheme + ':' if sep else repr(text)} (use stun:, stuns:, "
            "turn: or turns:)"
        )
    if rest.startswith("//"):
        raise UrlError("'//' after the scheme is not STUN/TURN URL syntax (RFC 7064/7065)")
    if "@" in rest:
        raise UrlError("user@host is not allowed: give username and credential as separate fields")
    hostport, qsep, query = rest.partition("?")
    value: str | None = None
    if qsep:
        if scheme in ("stun", "stuns"):
            raise UrlError("stun: URLs take no ?transport= (RFC 7064)")
        key, eq, value = query.partition("=")
        if key != "transport" or not eq:
            raise UrlError(f"unknown query {query!r} (only ?transport=udp or ?transport=tcp)")
        if value not in ("udp", "tcp"):
            raise UrlError(f"transport={value!r} (only udp or tcp)")
        if scheme == "turns" and value == "udp":
            raise UrlError("turns: with transport=udp is DTLS, which browsers do not support")
    if not hostport:
        raise UrlError("no host")
    host, port_text = _split_hostport(hostport, strict=True)
    port = DEFAULT_PORTS[scheme]
    if port_text:
        if not _valid_port(port_text):
            raise UrlError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return IceUrl(text, cast(Scheme, scheme), host, port, _transport(scheme, value))


def read_url(raw: str) -> IceUrl | None:
    """Read a URL leniently (see the module docstring); None when the scheme is not STUN/TURN."""
    text = raw.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        return None
    hostport, _, query = rest.partition("?")
    hostport = hostport.lstrip("/").rpartition("@")[2]
    host, port_text = _split_hostport(hostport, strict=False)
    port = int(port_text) if _valid_port(port_text) else DEFAULT_PORTS[scheme]
    value = next(
        (v for k, _, v in (p.partition("=") for p in query.lower().split("&")) if k == "transport"),
        None,
    )
    return IceUrl(text, cast(Scheme, scheme), host, port, _transport(scheme, value))


def safe_url(url: str) -> str:
    """A STUN/TURN URL without any ``user:password@`` part (credentials are never shown)."""
    scheme, sep, rest = url.partition(":")
    if not sep:
        return url
    head, q, query = rest.partition("?")
    if "@" in head:
        head = head.rsplit("@", 1)[1]
    return f"{scheme}:{head}{q}{query}"


def _transport(scheme: str, value: str | None) -> Transport:
    """RFC 7065: turns:/stuns: run over TLS, turn: over UDP unless ``?transport=tcp``."""
    if scheme in ("turns", "stuns"):
        return "tls"
    return "tcp" if scheme == "turn" and value == "tcp" else "udp"


def _valid_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _split_hostport(hostport: str, *, strict: bool) -> tuple[str, str]:
    """``host[:port]`` or ``[IPv6][:port]`` as (host, port text, '' when none). Strict: raise
    :class:`UrlError` where a browser refuses; else take what can be read."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            if strict:
                raise UrlError("unclosed '[' around an IPv6 address")
            return hostport[1:], ""
        host, after = hostport[1:end], hostport[end + 1 :]
        if strict:
            if after and not after.startswith(":"):
                raise UrlError(f"unexpected {after!r} after the IPv6 address")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise UrlError(f"{host!r} is not an IPv6 address") from None
        return host, after[1:] if after.startswith(":") else ""
    if hostport.count(":") > 1:
        if strict:
            raise UrlError("an IPv6 address must be in brackets: [2001:db8::1]:3478")
        return hostport, ""
    host, colon, port_text = hostport.partition(":")
    if strict:
        if colon and not port_text:
            raise UrlError("':' without a port")
        if not host:
            raise UrlError("no host")
        if not _HOSTNAME.match(host):
            raise UrlError(f"{host!r} is not a valid host name")
    return host, port_text
