"""Read an ``iceServers`` configuration into typed URLs, and list what is wrong with its shape.

Accepted shapes: an ``iceServers`` array, an object with ``iceServers`` (an RTCConfiguration or an
app's own wrapper), ``ice_servers`` (as some backends name it), and the TURN REST API response
``{username, password, ttl, uris}``. URL syntax follows RFC 7064 (``stun:``/``stuns:``) and RFC 7065
(``turn:``/``turns:`` with ``?transport=udp|tcp``), and what a browser rejects is called out: an
unparsable URL or a TURN URL without a credential makes ``new RTCPeerConnection()`` throw, so no
call starts at all.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from iceward.turn.credentials import parse_rest_username

Scheme = Literal["stun", "stuns", "turn", "turns"]
Transport = Literal["udp", "tcp", "tls"]
IssueSeverity = Literal["error", "warning"]

DEFAULT_PORTS: dict[str, int] = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}
SCHEMES = tuple(DEFAULT_PORTS)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)
#: Firefox warns that five or more STUN/TURN servers slow gathering down; Chrome gathers from all.
MANY_URLS = 8


@dataclass(frozen=True, slots=True)
class Credential:
    """The username/credential of one ``iceServers`` entry, and what the username says."""

    username: str
    credential: str
    #: ``<expiry>:<user>`` decoded (TURN REST API), else None.
    rest_expiry: int | None = None
    rest_user: str | None = None
    #: A 13-digit expiry: milliseconds where the server reads seconds (it never expires).
    expiry_in_milliseconds: bool = False


@dataclass(frozen=True, slots=True)
class IceUrl:
    """One URL of the configuration, parsed; ``transport`` is how the client reaches the server."""

    raw: str
    scheme: Scheme
    host: str
    port: int
    transport: Transport
    server_index: int
    credential: Credential | None = None

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


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    message: str
    severity: IssueSeverity = "error"
    subject: str | None = None


@dataclass(slots=True)
class IceConfig:
    """The parsed configuration: the URLs worth probing and every problem of shape found."""

    raw: Any = None
    urls: list[IceUrl] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    server_count: int = 0
    transport_policy: str | None = None
    #: TURN URLs that are well-formed but unusable (no credential): a browser refuses them.
    unusable_turn: list[str] = field(default_factory=list)
    #: An iceServers array was found (False: not JSON, or no array where one belongs).
    readable: bool = False

    @property
    def turn_urls(self) -> list[IceUrl]:
        return [u for u in self.urls if u.is_turn]

    @property
    def stun_urls(self) -> list[IceUrl]:
        return [u for u in self.urls if not u.is_turn]


class UrlError(ValueError):
    """A URL a browser would refuse; the message says why in plain words."""


def parse_url(raw: str, server_index: int = 0, credential: Credential | None = None) -> IceUrl:
    """Parse one STUN/TURN URL (RFC 7064/7065); raise :class:`UrlError` with the reason."""
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
    transport: Transport = "tls" if scheme in ("turns", "stuns") else "udp"
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
        if scheme == "turn":
            transport = "tcp" if value == "tcp" else "udp"
    host, port = _split_hostport(hostport, scheme)
    return IceUrl(text, scheme, host, port, transport, server_index, credential)  # type: ignore[arg-type]


def _split_hostport(hostport: str, scheme: str) -> tuple[str, int]:
    if not hostport:
        raise UrlError("no host")
    port_text = ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UrlError("unclosed '[' around an IPv6 address")
        host, after = hostport[1:end], hostport[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise UrlError(f"unexpected {after!r} after the IPv6 address")
            port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlError(f"{host!r} is not an IPv6 address") from None
    else:
        if hostport.count(":") > 1:
            raise UrlError("an IPv6 address must be in brackets: [2001:db8::1]:3478")
        host, colon, port_text = hostport.partition(":")
        if colon and not port_text:
            raise UrlError("':' without a port")
        if not host:
            raise UrlError("no host")
        if not _HOSTNAME.match(host):
            raise UrlError(f"{host!r} is not a valid host name")
    if not port_text:
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UrlError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def unique_urls(urls: list[IceUrl]) -> list[IceUrl]:
    """Each URL once per iceServers entry (a duplicate is a lint warning, not a second probe)."""
    return list({(u.raw, u.server_index): u for u in urls}.values())


def parse_credential(username: str, credential: str) -> Credential:
    head = username.partition(":")[0]
    if head.isdigit() and len(head) == 13:
        return Credential(username, credential, expiry_in_milliseconds=True)
    rest = parse_rest_username(username)
    if rest is None:
        return Credential(username, credential)
    return Credential(username, credential, rest_expiry=rest[0], rest_user=rest[1])


def load_config(text: str) -> IceConfig:
    """Parse JSON text; a malformed document is an issue of the result, never an exception."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        excerpt = text.strip().replace("\n", " ")[:120]
        return IceConfig(
            raw=text,
            issues=[
                ConfigIssue(
                    f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                    f"starts with {excerpt!r}"
                )
            ],
        )
    return from_json(data)


def _rest_api_response(data: dict[str, Any]) -> list[Any] | None:
    """The TURN REST API response shape (draft-uberti-behave-turn-rest) as iceServers."""
    uris = data.get("uris")
    if not isinstance(uris, list) or "iceServers" in data:
        return None
    return [{"urls": uris, "username": data.get("username"), "credential": data.get("password")}]


def from_json(data: Any) -> IceConfig:
    """Lint a decoded JSON value and collect its URLs."""
    config = IceConfig(raw=data)
    servers: Any
    if isinstance(data, list):
        servers = data
    elif isinstance(data, dict):
        rest = _rest_api_response(data)
        if rest is not None:
            servers = rest
        elif "iceServers" in data:
            servers = data["iceServers"]
        elif "ice_servers" in data:
            servers = data["ice_servers"]
            config.issues.append(
                ConfigIssue(
                    "the key is 'ice_servers': RTCPeerConnection reads 'iceServers' "
                    "(fine only if the app renames it)",
                    "warning",
                )
            )
        else:
            keys = ", ".join(sorted(map(str, data))[:8]) or "none"
            config.issues.append(
                ConfigIssue(
                    f"an object without 'iceServers' (keys: {keys}): "
                    "the browser gets no ICE servers"
                )
            )
            return config
        _lint_policy(config, data)
    else:
        config.issues.append(
            ConfigIssue(
                f"expected an iceServers array or an object with 'iceServers', got {_kind(data)}"
            )
        )
        return config
    if not isinstance(servers, list):
        config.issues.append(ConfigIssue(f"'iceServers' must be an array, got {_kind(servers)}"))
        return config
    config.server_count = len(servers)
    config.readable = True
    if not servers:
        config.issues.append(
            ConfigIssue("'iceServers' is empty: only host candidates are gathered")
        )
    for index, entry in enumerate(servers):
        _lint_server(config, index, entry)
    _lint_duplicates(config)
    if len(config.urls) >= MANY_URLS:
        config.issues.append(
            ConfigIssue(
                f"{len(config.urls)} URLs: every one is gathered per call and slows ICE down; "
                "one STUN and three TURN URLs (UDP, TCP, TLS-443) per region are enough",
                "warning",
            )
        )
    return config


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")


def _lint_policy(config: IceConfig, data: dict[str, Any]) -> None:
    policy = data.get("iceTransportPolicy")
    if policy is None:
        return
    if policy not in ("all", "relay"):
        config.issues.append(
            ConfigIssue(
                f"iceTransportPolicy {policy!r} is not 'all' or 'relay': RTCPeerConnection throws"
            )
        )
    else:
        config.transport_policy = str(policy)


def _lint_server(config: IceConfig, index: int, entry: Any) -> None:
    where = f"iceServers[{index}]"
    if not isinstance(entry, dict):
        config.issues.append(
            ConfigIssue(f"{where} must be an object, got {_kind(entry)}", "error", where)
        )
        return
    urls: Any = entry.get("urls")
    if urls is None and "url" in entry:
        config.issues.append(
            ConfigIssue(
                f"{where} uses the removed 'url' key instead of 'urls': browsers no longer read it "
                "(RTCPeerConnection throws TypeError)",
                "error",
                where,
            )
        )
        return
    if urls is None:
        config.issues.append(ConfigIssue(f"{where} has no 'urls'", "error", where))
        return
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls:
        config.issues.append(
            ConfigIssue(f"{where}.urls must be a URL or a non-empty array of URLs", "error", where)
        )
        return
    credential = _lint_credential(config, where, entry, urls)
    for raw in urls:
        if not isinstance(raw, str):
            config.issues.append(
                ConfigIssue(f"{where}.urls holds {_kind(raw)}, not a URL", "error", where)
            )
            continue
        try:
            url = parse_url(raw, index, None)
        except UrlError as exc:
            config.issues.append(
                ConfigIssue(
                    f"{raw!r}: {exc}; RTCPeerConnection throws SyntaxError, so no call starts",
                    "error",
                    raw,
                )
            )
            continue
        if url.is_turn and credential is None:
            config.unusable_turn.append(raw)
            continue
        config.urls.append(
            IceUrl(
                url.raw,
                url.scheme,
                url.host,
                url.port,
                url.transport,
                index,
                credential if url.is_turn else None,
            )
        )


def _lint_credential(
    config: IceConfig, where: str, entry: dict[str, Any], urls: list[Any]
) -> Credential | None:
    has_turn = any(isinstance(u, str) and u.strip().lower().startswith("turn") for u in urls)
    username, credential = entry.get("username"), entry.get("credential")
    ctype = entry.get("credentialType", "password")
    if ctype != "password":
        config.issues.append(
            ConfigIssue(
                f"{where}.credentialType {ctype!r}: browsers support only 'password'",
                "error",
                where,
            )
        )
    if not has_turn:
        return None
    missing = [n for n, v in (("username", username), ("credential", credential)) if v is None]
    if missing:
        hint = (
            " (the TURN REST API calls it 'password'; RTCIceServer wants 'credential')"
            if ("credential" in missing and "password" in entry)
            else ""
        )
        config.issues.append(
            ConfigIssue(
                f"{where} has TURN URLs but no {' or '.join(missing)}{hint}: "
                "RTCPeerConnection throws InvalidAccessError, so no call starts",
                "error",
                where,
            )
        )
        return None
    if not isinstance(username, str) or not isinstance(credential, str):
        config.issues.append(
            ConfigIssue(f"{where}: username and credential must be strings", "error", where)
        )
        return None
    if not username or not credential:
        empty = "username" if not username else "credential"
        config.issues.append(
            ConfigIssue(
                f"{where} has an empty {empty}: every TURN request will be refused", "error", where
            )
        )
    return parse_credential(username, credential)


def _lint_duplicates(config: IceConfig) -> None:
    seen: dict[tuple[str, str, int, str], str] = {}
    for url in config.urls:
        key = (url.scheme, url.host.lower(), url.port, url.transport)
        if key in seen:
            config.issues.append(
                ConfigIssue(
                    f"{url.raw!r} duplicates {seen[key]!r}: the browser gathers it twice",
                    "warning",
                    url.raw,
                )
            )
        else:
            seen[key] = url.raw
