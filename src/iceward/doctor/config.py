"""Read an ``iceServers`` configuration into typed URLs, and list what is wrong with its shape.

Accepted shapes: an ``iceServers`` array, an object with ``iceServers`` (an RTCConfiguration or an
app's own wrapper), ``ice_servers`` (as some backends name it), and the TURN REST API response
``{username, password, ttl, uris}``. URLs are read by :func:`iceward.diagnose.iceurl.parse_url`
(RFC 7064/7065, as a browser reads them), and what a browser rejects is called out: an unparsable
URL or a TURN URL without a credential makes ``new RTCPeerConnection()`` throw, so no call starts
at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from iceward.diagnose.iceurl import IceUrl, UrlError, parse_url
from iceward.turn.credentials import parse_rest_username

IssueSeverity = Literal["error", "warning"]

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
class ServerUrl(IceUrl):
    """A URL as an ``iceServers`` entry gives it: the entry's index and its credential."""

    server_index: int = 0
    credential: Credential | None = None


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    message: str
    severity: IssueSeverity = "error"
    subject: str | None = None


@dataclass(slots=True)
class IceConfig:
    """The parsed configuration: the URLs worth probing and every problem of shape found."""

    raw: Any = None
    urls: list[ServerUrl] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    server_count: int = 0
    transport_policy: str | None = None
    #: TURN URLs that are well-formed but unusable (no credential): a browser refuses them.
    unusable_turn: list[str] = field(default_factory=list)
    #: An iceServers array was found (False: not JSON, or no array where one belongs).
    readable: bool = False

    @property
    def turn_urls(self) -> list[ServerUrl]:
        return [u for u in self.urls if u.is_turn]

    @property
    def stun_urls(self) -> list[ServerUrl]:
        return [u for u in self.urls if not u.is_turn]


def unique_urls(urls: list[ServerUrl]) -> list[ServerUrl]:
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
            url = parse_url(raw)
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
            ServerUrl(
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
