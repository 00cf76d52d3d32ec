"""Server settings: flags over ``ICEWARD_*`` environment over a TOML file over defaults.

The knob names follow coturn's where one exists (realm, relay ports, external IP, static auth
secret, denied/allowed peers, user quota) so operators moving over recognise them.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from iceward.datadir import create_private_file, ensure_private_dir
from iceward.turn.policy import PeerPolicy
from iceward.units import parse_duration


def _flag(name: str) -> dict[str, Any]:
    """The `serve` flag of a setting whose flag is not its name (coturn's words)."""
    return {"flag": name}


def _shown(metavar: str) -> dict[str, Any]:
    """The placeholder of a setting's value in ``serve --help`` (else its type's: INTEGER...)."""
    return {"metavar": metavar}


def flag_of(name: str) -> str:
    """The `iceward serve` flag of setting ``name``."""
    extra = ServerSettings.model_fields[name].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag) if flag else "--" + name.replace("_", "-")


def metavar_of(name: str) -> str | None:
    """The placeholder `serve --help` shows for setting ``name``'s value, None: its type's."""
    extra = ServerSettings.model_fields[name].json_schema_extra
    metavar = extra.get("metavar") if isinstance(extra, dict) else None
    return str(metavar) if metavar else None


#: ``--tls-port`` value asking for any free port (0 turns TLS off).
ANY_PORT = -1


#: The default ``--acme-directory``: Let's Encrypt's production CA.
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

_DOMAIN = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")


def parse_region_prices(values: list[str]) -> dict[str, float]:
    """``["eu=0.05", "us=0.09"]`` -> {region: price per GB}; ValueError naming a bad one."""
    prices = {}
    for value in values:
        region, sep, price = value.partition("=")
        try:
            number = float(price)
        except ValueError:
            number = -1.0
        if not sep or not region.strip() or not 0 <= number < 1e6:
            raise ValueError(f"{value!r} is not REGION=PRICE (a price per GB, like eu=0.05)")
        prices[region.strip()] = number
    return prices


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "iceward"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ICEWARD_", extra="forbid")

    # Each setting is written once: its type, default, limits and the help of its `serve` flag
    # (``--`` and the name with dashes, unless ``flag`` says otherwise; ``metavar`` is the
    # placeholder of its value; see iceward.cli).
    listen: list[str] = Field(
        default_factory=lambda: ["0.0.0.0"],
        description="Address to listen on (repeatable).",
        json_schema_extra=_shown("IP"),
    )
    port: int = Field(
        3478,
        ge=0,
        le=65535,
        description="UDP and TCP port; 0 takes a free one (see --ready-file).",
        json_schema_extra=_shown("PORT"),
    )
    tls_port: int = Field(
        5349,
        ge=ANY_PORT,
        le=65535,
        description=f"TLS port; 0 disables TLS, {ANY_PORT} takes a free port (see --ready-file).",
        json_schema_extra=_shown("PORT"),
    )
    cert: Path | None = Field(
        None, description="TLS certificate chain (PEM).", json_schema_extra=_shown("FILE")
    )
    key: Path | None = Field(
        None, description="TLS private key (PEM).", json_schema_extra=_shown("FILE")
    )
    acme: list[str] = Field(
        default_factory=list,
        description="Get and renew the TLS certificate for DOMAIN from an ACME CA (repeatable).",
        json_schema_extra=_shown("DOMAIN"),
    )
    acme_directory: str = Field(
        LETS_ENCRYPT,
        description="The ACME CA's directory URL [Let's Encrypt].",
        json_schema_extra=_shown("URL"),
    )
    acme_email: str | None = Field(
        None,
        description="Contact for the ACME account (expiry notices).",
        json_schema_extra=_shown("EMAIL"),
    )
    acme_challenge: Literal["tls-alpn-01", "http-01"] = Field(
        "tls-alpn-01",
        description="tls-alpn-01 (on the TLS port) or http-01 (on --http, forwarded from port 80).",
    )
    acme_http: str | None = Field(
        None,
        description="Also answer HTTP-01 on this address alone (port 80), not only on --http.",
        json_schema_extra=_shown("HOST:PORT"),
    )
    acme_renew_before: float = Field(
        30.0,
        gt=0,
        description="Renew the ACME certificate this many days before it expires.",
        json_schema_extra=_shown("DAYS"),
    )
    relay_ip: list[str] = Field(
        default_factory=list,
        description="Address relays bind to.",
        json_schema_extra=_shown("IP"),
    )
    relay_ports: str = Field(
        "49152-65535", description="Relay port range.", json_schema_extra=_shown("LOW-HIGH")
    )
    external_ip: str | None = Field(
        None,
        description="Relayed address to advertise (behind 1:1 NAT).",
        json_schema_extra=_shown("PUBLIC[/PRIVATE]"),
    )
    realm: str = Field("iceward", description="Authentication realm.")
    secret: list[str] = Field(
        default_factory=list,
        description="TURN REST shared secret (repeatable, for rotation).",
        json_schema_extra=_shown("SECRET"),
    )
    user: list[str] = Field(
        default_factory=list,
        description="Static user NAME:PASSWORD or NAME:0xKEY (repeatable).",
        json_schema_extra=_shown("NAME:PASSWORD"),
    )
    allow_peer: list[str] = Field(
        default_factory=list,
        description="Open a denied peer range (repeatable).",
        json_schema_extra=_shown("CIDR"),
    )
    deny_peer: list[str] = Field(
        default_factory=list, description="Deny a peer range.", json_schema_extra=_shown("CIDR")
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where state is kept.",
        json_schema_extra=_shown("DIR"),
    )
    max_allocations_per_user: int = Field(
        0,
        ge=0,
        description="Allocations per user, 0 = unlimited.",
        json_schema_extra=_flag("--user-quota"),
    )
    max_allocations: int = Field(
        10_000, ge=1, description="Allocations in all.", json_schema_extra=_flag("--total-quota")
    )
    max_permissions: int = Field(256, ge=1, description="Permissions per allocation.")
    tcp_relay: bool = Field(
        True,
        description="Relay to TCP peers (RFC 6062) for TCP/TLS clients; off: 442 (coturn's "
        "no-tcp-relay).",
    )
    max_tcp_connections: int = Field(
        32, ge=1, description="RFC 6062 peer connections per TCP allocation."
    )
    default_lifetime: int = Field(
        600,
        ge=60,
        description="Allocation lifetime (s) by default.",
        json_schema_extra=_shown("SECONDS"),
    )
    max_lifetime: int = Field(
        3600,
        ge=60,
        description="Longest allocation lifetime (s).",
        json_schema_extra=_shown("SECONDS"),
    )
    permission_lifetime: int = Field(
        300, ge=10, description="Permission lifetime (s).", json_schema_extra=_shown("SECONDS")
    )
    channel_lifetime: int = Field(
        600,
        ge=10,
        description="Channel binding lifetime (s).",
        json_schema_extra=_shown("SECONDS"),
    )
    nonce_lifetime: int = Field(
        600,
        ge=10,
        description="Nonce lifetime (s), then 438.",
        json_schema_extra=_shown("SECONDS"),
    )
    log_level: str = Field(
        "info",
        description="debug, info, warning or error.",
        json_schema_extra=_shown("LEVEL"),
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object a line (fields in the README)."
    )
    http: str = Field(
        "127.0.0.1:8080",
        description="Where the HTTP API listens (port 0: a free one), or off.",
        json_schema_extra=_shown("HOST:PORT"),
    )
    public_url: list[str] = Field(
        default_factory=list,
        description="URL handed to clients (repeatable).",
        json_schema_extra=_shown("URL"),
    )
    database: str | None = Field(
        None,
        description="SQLAlchemy URL [sqlite in the data dir].",
        json_schema_extra=_shown("URL"),
    )
    cors_origin: list[str] = Field(
        default_factory=list,
        description="Browser origin allowed to call the API.",
        json_schema_extra=_shown("ORIGIN"),
    )
    admin_allow: list[str] = Field(
        default_factory=list,
        description="Network allowed the admin API.",
        json_schema_extra=_shown("CIDR"),
    )
    api_rate: float = Field(10.0, gt=0, description="Requests/s per API key.")
    api_burst: int = Field(20, ge=1, description="Burst of requests per API key.")
    credential_ttl: int = Field(
        86400,
        ge=60,
        le=7 * 86400,
        description="Default credential lifetime (s).",
        json_schema_extra=_shown("SECONDS"),
    )
    max_credential_ttl: int = Field(
        7 * 86400,
        ge=60,
        description="Refuse REST credentials valid longer than this (s).",
        json_schema_extra=_shown("SECONDS"),
    )
    trusted_proxy: list[str] = Field(
        default_factory=list,
        description="Proxy whose X-Forwarded-For is believed; else the peer counts.",
        json_schema_extra=_shown("CIDR"),
    )
    proxy_protocol_from: list[str] = Field(
        default_factory=list,
        description="Load balancer whose TCP/TLS connections start with a PROXY header.",
        json_schema_extra=_shown("CIDR"),
    )
    connection_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds for a TCP/TLS connection's TLS and first request.",
        json_schema_extra=_shown("SECONDS"),
    )
    idle_timeout: float = Field(
        60.0,
        gt=0,
        description="Close TCP/TLS connections silent this long without allocation.",
        json_schema_extra=_shown("SECONDS"),
    )
    max_connections_per_source: int = Field(
        500, ge=1, description="Open TCP/TLS connections per source IP."
    )
    max_auth_failures: int = Field(
        60, ge=1, description="Failed authentications answered per source IP per minute."
    )
    max_challenges: int = Field(
        500, ge=1, description="401 challenges answered per UDP source IP per second."
    )
    max_requests_per_source: int = Field(
        1000,
        ge=0,
        description="STUN messages (not ChannelData) read per UDP source IP (IPv6: per /64) "
        "per second, bursts of as many, each worker; the rest are dropped before parsing. A "
        "client sends a few a second (allocation, refreshes, keepalives), so 1000 leaves room "
        "for an office behind one NAT; 0 = no limit.",
        json_schema_extra=_shown("N"),
    )
    workers: int | None = Field(
        None, ge=1, le=128, description="Relaying processes sharing the ports [one per core]."
    )
    alternate_address: str | None = Field(
        None,
        description="RFC 5780: a second address for NAT behaviour discovery (CHANGE-REQUEST).",
        json_schema_extra=_shown("IP[:PORT]"),
    )
    alternate_server: list[str] = Field(
        default_factory=list,
        description="Where a draining node sends new UDP/TCP allocations (300 Try Alternate; "
        "repeatable, taken in turn among those of the client's IP family); in a fleet the "
        "healthy node of the same region is used.",
        json_schema_extra=_shown("IP:PORT"),
    )
    tls_alternate_server: list[str] = Field(
        default_factory=list,
        description="The same for TLS clients; NAME is sent as ALTERNATE-DOMAIN (repeatable).",
        json_schema_extra=_shown("[NAME@]IP:PORT"),
    )
    drain_timeout: float = Field(
        3600,
        gt=0,
        description="A draining node exits when its last allocation ends, or after this (s).",
        json_schema_extra=_shown("SECONDS"),
    )
    api_key_grace: float = Field(
        300.0,
        ge=0,
        description="Seconds API keys are checked against the last good reading while the "
        "database is down; then 503.",
        json_schema_extra=_shown("SECONDS"),
    )
    cluster: str | None = Field(
        None,
        description="Join a fleet: the Redis URL nodes share (redis://HOST:PORT/DB).",
        json_schema_extra=_shown("URL"),
    )
    node_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This node's name in the fleet (unique), on the calls browsers report and "
        "in usage records [the host name].",
        json_schema_extra=_shown("NAME"),
    )
    region: str = Field(
        "default",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This node's region in the fleet and in usage records and reports.",
        json_schema_extra=_shown("REGION"),
    )
    region_map: Path | None = Field(
        None,
        description="Regions of client addresses: lines 'CIDR REGION' (IPv4 and IPv6).",
        json_schema_extra=_shown("FILE"),
    )
    geoip: Path | None = Field(
        None,
        description="Regions of client addresses from a MaxMind database (.mmdb).",
        json_schema_extra=_shown("FILE"),
    )
    region_fallback: list[str] = Field(
        default_factory=list,
        description="Regions to try when one has no healthy node: eu=us-east,us-west (repeatable).",
        json_schema_extra=_shown("REGION=REGION,..."),
    )
    ready_file: Path | None = Field(
        None,
        description="Once serving, write the ports bound (JSON: port, tls_port, http) here.",
        json_schema_extra=_shown("FILE"),
    )
    max_bps: int = Field(
        0,
        ge=0,
        description="Bytes/s an allocation may relay, each direction (coturn's); 0 = no limit.",
        json_schema_extra=_shown("BYTES"),
    )
    bps_capacity: int = Field(
        0,
        ge=0,
        description="Bytes/s the node relays in all, each direction (coturn's); 0 = no limit.",
        json_schema_extra=_shown("BYTES"),
    )
    quota_throttle_bps: int = Field(
        0,
        ge=0,
        description="Bytes/s each way that allocations of a user or label over a block quota "
        "are held to, instead of ending; 0 = they end.",
        json_schema_extra=_shown("BYTES"),
    )
    region_price: list[str] = Field(
        default_factory=list,
        description="REGION=PRICE: money per relayed GB in usage reports of that region "
        "(repeatable; --price-per-gb prices the others).",
        json_schema_extra=_shown("REGION=PRICE"),
    )
    usage_interval: float = Field(
        60.0,
        ge=0.2,
        le=3600,
        description="Seconds between interim usage records (and byte quota checks).",
        json_schema_extra=_shown("SECONDS"),
    )
    usage_retention: str = Field(
        "90d",
        description="Usage records older than this are deleted (like 90d, 12h).",
        json_schema_extra=_shown("DURATION"),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _CONFIG_FILE.get("path")
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("region_price")
    @classmethod
    def _check_prices(cls, values: list[str]) -> list[str]:
        parse_region_prices(values)
        return values

    @property
    def region_prices(self) -> dict[str, float]:
        return parse_region_prices(self.region_price)

    @field_validator("usage_retention")
    @classmethod
    def _check_retention(cls, value: str) -> str:
        if parse_duration(value) < 3600:
            raise ValueError(f"{value!r}: keep usage records an hour at least")
        return value

    @field_validator("relay_ports")
    @classmethod
    def _check_range(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @field_validator("listen", "relay_ip")
    @classmethod
    def _check_ips(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_address(v)
        return values

    @field_validator("allow_peer", "deny_peer")
    @classmethod
    def _check_cidrs(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=False)
        PeerPolicy(allow=values)  # refuses ranges that can never be opened
        return values

    @field_validator("http")
    @classmethod
    def _check_http(cls, value: str) -> str:
        parse_http(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _check_urls(cls, values: list[str]) -> list[str]:
        for v in values:
            if not v.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"public URL {v!r} must start with stun:, stuns:, turn: or turns:")
        return values

    @field_validator("alternate_address")
    @classmethod
    def _check_alternate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_alternate_address(value, 3478)
        return value

    @field_validator("alternate_server")
    @classmethod
    def _check_alternate_servers(cls, values: list[str]) -> list[str]:
        for v in values:
            if parse_alternate_server(v)[2] is not None:
                raise ValueError(f"alternate server {v!r}: a NAME is for --tls-alternate-server")
        return values

    @field_validator("tls_alternate_server")
    @classmethod
    def _check_tls_alternate_servers(cls, values: list[str]) -> list[str]:
        for v in values:
            parse_alternate_server(v)
        return values

    @field_validator("admin_allow", "trusted_proxy", "proxy_protocol_from")
    @classmethod
    def _check_admin_nets(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=False)
        return values

    @field_validator("user")
    @classmethod
    def _check_users(cls, values: list[str]) -> list[str]:
        for v in values:
            parse_user(v)
        return values

    @field_validator("acme")
    @classmethod
    def _check_domains(cls, values: list[str]) -> list[str]:
        domains = [v.strip().lower().rstrip(".") for v in values]
        for v in domains:
            if not _DOMAIN.match(v) or len(v) > 253 or v.rpartition(".")[2].isdigit():
                raise ValueError(
                    f"ACME domain {v!r} must be a DNS name with a dot (no IP address, no wildcard)"
                )
        return list(dict.fromkeys(domains))

    @field_validator("acme_http")
    @classmethod
    def _check_acme_http(cls, value: str | None) -> str | None:
        if value is not None and parse_http(value) is None:
            raise ValueError("acme-http must be HOST:PORT")
        return value

    @field_validator("acme_directory")
    @classmethod
    def _check_directory(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"ACME directory {value!r} must be an https:// URL")
        return value

    @field_validator("acme_email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s:/]+@[^@\s:/]+\.[^@\s:/]+", value):
            raise ValueError(f"ACME email {value!r} is not an email address")
        return value

    @field_validator("cluster")
    @classmethod
    def _check_cluster(cls, value: str | None) -> str | None:
        """A Redis URL redis-py reads as written (its errors, and these, never repeat the URL:
        it may hold a password)."""
        if value is None:
            return value
        usage = "must be a Redis URL: redis://HOST:PORT/DB (rediss:// for TLS, or unix://PATH)"
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(usage)
        try:
            from redis.connection import parse_url

            parse_url(value)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"{exc}; it {usage}") from None
        path = value.partition("://")[2].partition("?")[0].partition("/")[2]
        if not value.startswith("unix://") and path and not path.isdigit():
            raise ValueError(f"the database {path!r} is not a number; it {usage}")
        return value

    @field_validator("region_fallback")
    @classmethod
    def _check_fallback(cls, values: list[str]) -> list[str]:
        parse_region_fallback(values)
        return values

    @field_validator("external_ip")
    @classmethod
    def _check_external(cls, value: str | None) -> str | None:
        parse_external_ip(value)
        return value

    @model_validator(mode="after")
    def _check_lifetimes(self) -> ServerSettings:
        if self.max_lifetime < self.default_lifetime:
            raise ValueError("max_lifetime must be at least default_lifetime")
        if self.credential_ttl > self.max_credential_ttl:
            raise ValueError("credential_ttl must not exceed max_credential_ttl")
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        if self.acme and self.cert:
            raise ValueError("--acme and --cert exclude each other: the certificate comes from one")
        if self.acme and self.tls_port == 0:
            raise ValueError("--acme needs TLS: --tls-port 0 turns it off")
        if self.acme_http and not (self.acme and self.acme_challenge == "http-01"):
            raise ValueError("--acme-http answers HTTP-01 only: add --acme-challenge http-01")
        if self.alternate_address is not None:
            alt_ip, alt_port = parse_alternate_address(self.alternate_address, self.port)
            specific = [ip for ip in self.listen if not ipaddress.ip_address(ip).is_unspecified]
            if len(specific) != 1 or len(self.listen) != 1:
                raise ValueError("--alternate-address needs exactly one specific --listen IP")
            if ipaddress.ip_address(alt_ip).version != ipaddress.ip_address(specific[0]).version:
                raise ValueError("--alternate-address and --listen must be the same IP family")
            if alt_ip == specific[0] or alt_port == self.port or self.port == 0:
                raise ValueError("--alternate-address needs another IP and another fixed port")
        return self

    @property
    def port_range(self) -> tuple[int, int]:
        return parse_port_range(self.relay_ports)

    @property
    def http_bind(self) -> tuple[str, int] | None:
        """Where the HTTP API listens, or None when ``--http off``."""
        return parse_http(self.http)


def parse_http(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is 127.0.0.1) or ``off`` (None)."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http {value!r} must be HOST:PORT or off")
    host = host.strip("[]") or "127.0.0.1"
    ipaddress.ip_address(host)
    return host, int(port)


def parse_user(spec: str) -> tuple[str, str | bytes]:
    """``NAME:PASSWORD`` -> (name, password); ``NAME:0x<32 hex>`` -> (name, MD5 key bytes)."""
    name, sep, secret = spec.partition(":")
    if not sep or not name or not secret:
        raise ValueError(f"user {spec!r} must be NAME:PASSWORD or NAME:0xKEY")
    if secret.startswith("0x") and len(secret) == 34:
        try:
            return name, bytes.fromhex(secret[2:])
        except ValueError:
            pass
    return name, secret


def parse_external_ip(value: str | None) -> tuple[str, str]:
    """``PUBLIC[/PRIVATE]`` -> (public, private), each "" when not given."""
    public, _, private = (value or "").partition("/")
    for part in (public, private):
        if part:
            ipaddress.ip_address(part)
    return public, private


def parse_region_fallback(values: list[str]) -> dict[str, list[str]]:
    """``["eu=us-east,us-west"]`` -> ``{"eu": ["us-east", "us-west"]}``: the regions tried, in
    order, when a region has no healthy node."""
    out: dict[str, list[str]] = {}
    for value in values:
        for part in value.split(";"):
            region, sep, rest = part.strip().partition("=")
            others = [r.strip() for r in rest.split(",") if r.strip()]
            if not sep or not region.strip() or not others:
                raise ValueError(f"region fallback {part!r} must look like eu=us-east,us-west")
            out[region.strip()] = others
    return out


_CONFIG_FILE: dict[str, Path | None] = {}


def parse_port_range(text: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.partition("-")
    if not sep or not lo_s.strip().isdigit() or not hi_s.strip().isdigit():
        raise ValueError(f"relay port range {text!r} must look like LOW-HIGH")
    lo, hi = int(lo_s), int(hi_s)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"relay port range {text!r} must be within 1024-65535, low <= high")
    return lo, hi


def parse_alternate_address(value: str, port: int) -> tuple[str, int]:
    """``IP`` or ``IP:PORT`` ([v6]:PORT); the port defaults to ``port + 1``."""
    host, sep, tail = value.rpartition(":")
    if sep and tail.isdigit() and (value.startswith("[") or ":" not in host):
        ip, alt_port = host.strip("[]"), int(tail)
    else:
        ip, alt_port = value.strip("[]"), port + 1
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"alternate address {value!r} must be IP or IP:PORT") from None
    if not 0 < alt_port <= 65535:
        raise ValueError(f"alternate address {value!r}: port out of range")
    return ip, alt_port


def parse_alternate_server(value: str) -> tuple[str, int, str | None]:
    """``[NAME@]IP:PORT`` ([v6]:PORT) -> (IP, PORT, NAME or None): an address a client can be
    sent to, so an IP literal (ALTERNATE-SERVER carries no name) and a port."""
    name, at, rest = value.rpartition("@")
    host, sep, port = rest.rpartition(":")
    ip = host.strip("[]")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"alternate server {value!r} must be [NAME@]IP:PORT") from None
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535 or (at and not name):
        raise ValueError(f"alternate server {value!r} must be [NAME@]IP:PORT") from None
    if ":" in ip and not host.startswith("["):
        raise ValueError(f"alternate server {value!r}: write an IPv6 address as [IP]:PORT")
    if name and (len(name) > 253 or not _DNS_NAME.fullmatch(name)):
        raise ValueError(f"alternate server {value!r}: NAME must be a DNS name (its certificate's)")
    return ip, int(port), name or None


#: A DNS name as a certificate names a server (letters, digits, hyphens; ``*.`` not allowed).
_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class SettingsError(ValueError):
    """Settings that cannot be used, in one line that names the setting (and the file)."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServerSettings:
    """Settings from flags (``overrides``, None meaning "not given"), environment and TOML file;
    :class:`SettingsError` says in one line what is wrong where."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")
    _CONFIG_FILE["path"] = config_file
    try:
        given = {k: v for k, v in overrides.items() if v is not None and v != []}
        return ServerSettings(**given)
    except ValidationError as exc:
        raise SettingsError(describe_invalid(exc, config_file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {config_file}: not valid TOML: {exc}") from None
    except SourceError as exc:  # an ICEWARD_* value that a list setting cannot read
        found = re.search(r'field "(\w+)" from source "EnvSettingsSource"', str(exc))
        if found is None:
            raise SettingsError(str(exc)) from None
        variable = f"ICEWARD_{found.group(1).upper()}"
        raise SettingsError(  # the value is not repeated: it may be a secret
            f"{variable}: a list setting is a JSON array in the environment, "
            f"""e.g. {variable}='["VALUE"]'"""
        ) from None
    except OSError as exc:
        raise SettingsError(f"config file {config_file}: {exc.strerror or exc}") from None
    finally:
        _CONFIG_FILE.pop("path", None)


def describe_invalid(exc: ValidationError, config_file: Path | None = None) -> str:
    """Each wrong setting with what is wrong, on one line: an unknown key (only a TOML file has
    those) with the setting it most likely meant, pydantic's "Value error, " prefixes dropped."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            text = f"unknown setting {where}"
            if config_file is not None:
                text += f" in {config_file}"
            close = difflib.get_close_matches(where, ServerSettings.model_fields, n=1)
            parts.append(text + (f"; did you mean {close[0]}?" if close else ""))
            continue
        cause = (err.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, Exception) else err["msg"]
        parts.append(f"{where.replace('_', '-')}: {message}" if where else message)
    return "; ".join(parts)


#: ``ICEWARD_*`` variables that are not settings: read by other parts of iceward and its tests.
OTHER_VARIABLES = ("FASTPATH", "LAB_", "TEST_", "SCREENSHOTS", "FUZZ_", "ADMIN_KEY")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``ICEWARD_*`` environment variable that is no setting (a typo, such as
    ``ICEWARD_RELAYPORTS``, would otherwise be ignored without a word), naming the closest."""
    environ = os.environ if environ is None else environ
    settings = {name.upper() for name in ServerSettings.model_fields}
    warnings = []
    for variable in sorted(environ):
        name = variable.upper().removeprefix("ICEWARD_")
        if name == variable.upper() or name in settings or name.startswith(OTHER_VARIABLES):
            continue
        close = difflib.get_close_matches(name, settings, n=1, cutoff=0.7)
        hint = f"; did you mean ICEWARD_{close[0]}?" if close else ""
        warnings.append(f"{variable} is not a setting: ignored{hint}")
    return warnings


def ensure_secret(data_dir: Path) -> str:
    """The REST secret kept in the data dir (0700), created 0600 on first start."""
    path = data_dir / "rest-secret"
    ensure_private_dir(data_dir)
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    create_private_file(path, (value + "\n").encode())
    return value
