"""A coturn config translated into iceward's settings, checked by :class:`ServerSettings`, and
written as TOML with what does not carry over as comments.

Faithful first: what coturn would do with the file is what the import aims for (static users are
left out when REST secrets are on, because coturn ignores them then; TLS is off when coturn had
no certificate), except where iceward is safer by design (the peer policy), which is said.
"""

from __future__ import annotations

import ipaddress
import json
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from iceward import __version__
from iceward.config import ServerSettings, parse_user
from iceward.coturn.parse import Entry, ImportFailure, boolean
from iceward.coturn.table import BY_NAME, DIFFERENCES
from iceward.turn.policy import DEFAULT_DENIED, NEVER_ALLOWED

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NoteKind = Literal["unsupported", "elsewhere", "unknown", "warning", "differs", "built-in"]

#: Kinds listed on stderr and under "Not carried over" / "Check" in the TOML.
REPORTED: tuple[NoteKind, ...] = ("unknown", "unsupported", "elsewhere", "warning", "differs")

_LOOPBACK = ("127.0.0.0/8", "::1/128")
_MULTICAST = ("224.0.0.0/4", "ff00::/8")
_DEFAULT_TLS_FILES = ("turn_server_cert.pem", "turn_server_pkey.pem")


@dataclass(frozen=True, slots=True)
class Note:
    kind: NoteKind
    #: The coturn option (or a topic for ``differs``) and the lines it came from.
    option: str
    text: str
    lines: tuple[int, ...] = ()

    def label(self) -> str:
        """The option and where it is: ``cli-password (lines 716, 720)``."""
        if not self.lines:
            return self.option
        word = "line" if len(self.lines) == 1 else "lines"
        return f"{self.option} ({word} {', '.join(map(str, self.lines))})"


def grouped(notes: Iterable[Note]) -> list[tuple[NoteKind, str, str]]:
    """(kind, labels, text): the notes that say the same thing, said once."""
    groups: dict[tuple[NoteKind, str], list[Note]] = {}
    for note in notes:
        groups.setdefault((note.kind, note.text), []).append(note)
    return [(kind, ", ".join(n.label() for n in ns), text) for (kind, text), ns in groups.items()]


@dataclass
class Result:
    source: Path
    #: TOML key (a ServerSettings field) -> value, checked by ServerSettings.
    settings: dict[str, Any]
    #: TOML key -> the config lines it came from.
    origins: dict[str, list[Entry]]
    notes: list[Note] = field(default_factory=list)

    def reported(self) -> list[tuple[NoteKind, str, str]]:
        """What stderr lists, grouped: unknown, unsupported, elsewhere, warning, differs."""
        order = {kind: i for i, kind in enumerate(REPORTED)}
        notes = sorted(
            (n for n in self.notes if n.kind in order),
            key=lambda n: (order[n.kind], n.lines or (0,)),
        )
        return grouped(notes)

    def toml(self) -> str:
        return render_toml(self)


class _FileOnly(ServerSettings):
    """ServerSettings that read nothing but what they are given (no environment, no file)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def translate(entries: Sequence[Entry], source: Path) -> Result:
    """The settings a coturn config amounts to; :class:`ImportFailure` naming the line when a
    value cannot be read or the result does not validate."""
    return _Translation(entries, source).run()


def _fields() -> list[str]:
    return list(ServerSettings.model_fields)


class _Translation:
    def __init__(self, entries: Sequence[Entry], source: Path) -> None:
        self.source = source
        self.entries = list(entries)
        self.by_name: dict[str, list[Entry]] = {}
        for entry in self.entries:
            self.by_name.setdefault(entry.name, []).append(entry)
        self.settings: dict[str, Any] = {}
        self.origins: dict[str, list[Entry]] = {}
        self.notes: list[Note] = []
        self.handled: set[str] = set()

    # -- reading values --------------------------------------------------------------------------

    def all(self, name: str) -> list[Entry]:
        return self.by_name.get(name, [])

    def last(self, name: str) -> Entry | None:
        found = self.all(name)
        return found[-1] if found else None

    def on(self, name: str) -> Entry | None:
        """The entry that turns flag ``name`` on (coturn's booleans), or None."""
        entry = self.last(name)
        if entry is None:
            return None
        value = boolean(entry)
        if value is None:
            raise self.fail(
                entry, f"{entry.value!r} is not a boolean (on/off, yes/no, 1/0, true/false)"
            )
        return entry if value else None

    def fail(self, entry: Entry, message: str) -> ImportFailure:
        return ImportFailure(self.source, entry.line, f"{entry.name}: {message}")

    def value(self, entry: Entry) -> str:
        if not entry.value:
            raise self.fail(entry, "needs a value")
        return entry.value

    def number(self, entry: Entry, default: int | None = None) -> int:
        if not entry.value and default is not None:
            return default
        text = self.value(entry)
        if not text.isascii() or not text.isdigit():
            raise self.fail(entry, f"{text!r} is not a number (only whole lines are # comments)")
        return int(text)

    def port(self, entry: Entry) -> int:
        port = self.number(entry)
        if not 1 <= port <= 65535:
            raise self.fail(entry, f"{port} is not a port (1-65535)")
        return port

    def ip(self, entry: Entry, text: str | None = None) -> str:
        text = self.value(entry) if text is None else text
        try:
            return str(ipaddress.ip_address(text.strip().strip("[]")))
        except ValueError:
            raise self.fail(entry, f"{text!r} is not an IP address") from None

    def networks(self, entry: Entry) -> list[IPNetwork]:
        """coturn's ``IP`` or ``A-B`` (and a CIDR, which coturn itself refuses) as CIDRs."""
        text = self.value(entry).strip()
        if "-" in text:
            low_text, high_text = text.split("-", 1)
            low, high = self.ip(entry, low_text), self.ip(entry, high_text)
            a, b = ipaddress.ip_address(low), ipaddress.ip_address(high)
            if a.version != b.version or int(a) > int(b):
                raise self.fail(entry, f"{text!r} is not a range LOW-HIGH of one family")
            return list(ipaddress.summarize_address_range(a, b))
        if "/" in text:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise self.fail(entry, f"{text!r} is not an IP, a range A-B or a CIDR") from None
            self.note("warning", entry.name, f"{text} is a CIDR, which coturn does not read "
                      "here (IP or A-B); imported as written", entry)  # fmt: skip
            return [net]
        return [ipaddress.ip_network(self.ip(entry))]

    # -- writing ---------------------------------------------------------------------------------

    def set(self, key: str, value: Any, *entries: Entry | None) -> None:
        if key not in ServerSettings.model_fields:  # a renamed setting: fail loudly in tests
            raise KeyError(f"ServerSettings has no field {key!r}")
        self.settings[key] = value
        self.origins.setdefault(key, []).extend(e for e in entries if e is not None)

    def note(self, kind: NoteKind, option: str, text: str, *entries: Entry) -> None:
        """Record a note; an option noted here gets no note from its row."""
        self.handled.add(option)
        self.notes.append(Note(kind, option, text, tuple(sorted({e.line for e in entries}))))

    # -- the translation -------------------------------------------------------------------------

    def run(self) -> Result:
        self.listeners()
        self.tls()
        self.relays()
        self.credentials()
        self.peers()
        self.limits()
        self.others()
        self.differences()
        self.check()
        self.settings = {k: self.settings[k] for k in _fields() if k in self.settings}
        return Result(self.source, self.settings, self.origins, self.notes)

    def listeners(self) -> None:
        ips_entries = self.all("listening-ip")
        ips = list(dict.fromkeys(self.ip(e) for e in ips_entries))
        if ips:
            self.set("listen", ips, *ips_entries)
        port_entry = self.last("listening-port")
        port = self.port(port_entry) if port_entry else 3478
        if port_entry:
            self.set("port", port, port_entry)
        alt = self.last("alt-listening-port")
        asked = [e for e in (alt, self.on("rfc5780")) if e is not None]
        if not asked:
            return
        if self.on("no-rfc5780"):
            self.note("built-in", asked[0].name, "RFC 5780 is off (no-rfc5780)", *asked)
            return
        alt_port = port + 1 if alt is None or alt.value in ("", "0") else self.port(alt)
        families = {ipaddress.ip_address(ip).version for ip in ips}
        if len(ips) == 2 and len(families) == 1 and alt_port != port:
            second = f"[{ips[1]}]" if ":" in ips[1] else ips[1]
            self.set("listen", ips[:1], *ips_entries)
            self.set("alternate_address", f"{second}:{alt_port}", *asked)
            self.note(
                "warning", asked[0].name,
                f"RFC 5780: iceward relays on {ips[0]} and answers NAT behaviour discovery on "
                f"{ips[1]} too (coturn relayed on both)", *asked,
            )  # fmt: skip
            return
        self.note(
            "unsupported", asked[0].name,
            "iceward answers RFC 5780 with one listening IP plus an alternate: set listen = "
            "[\"A\"] and alternate_address = \"B:PORT\" by hand "
            f"(this config has {len(ips)} listening IP(s))", *asked,
        )  # fmt: skip

    def _tls_file(self, entry: Entry | None, default: str) -> tuple[Path | None, Entry | None]:
        if entry is not None:
            path = Path(self.value(entry))
            return (path if path.is_absolute() else self.source.parent / path), entry
        candidate = self.source.parent / default
        return (candidate if candidate.is_file() else None), None

    def tls(self) -> None:
        port_entry = self.last("tls-listening-port")
        tls_port = self.port(port_entry) if port_entry else None
        no_tls = self.on("no-tls")
        cert_entry, key_entry = self.last("cert"), self.last("pkey")
        if no_tls:
            self.set("tls_port", 0, no_tls)
            if cert_entry or key_entry:
                used = [e for e in (cert_entry, key_entry) if e]
                self.note("built-in", used[0].name, "not needed: no-tls", *used)
            return
        cert, cert_from = self._tls_file(cert_entry, _DEFAULT_TLS_FILES[0])
        key, key_from = self._tls_file(key_entry, _DEFAULT_TLS_FILES[1])
        if cert is None or key is None:
            missing = "cert" if cert is None else "pkey"
            default = _DEFAULT_TLS_FILES[0 if cert is None else 1]
            used = [e for e in (port_entry, cert_entry, key_entry) if e]
            self.set("tls_port", 0, *used)
            self.note(
                "differs", "tls",
                f"TLS off (tls_port = 0): no {missing} given and no {default} next to the config, "
                "so coturn served no TLS; to serve turns:, set cert, key and tls_port", *used,
            )  # fmt: skip
            return
        self.set("cert", str(cert), cert_from)
        self.set("key", str(key), key_from)
        if tls_port is not None:
            self.set("tls_port", tls_port, port_entry)
        for path, entry in ((cert, cert_from), (key, key_from)):
            if not path.is_file():
                self.note("warning", entry.name if entry else "cert",
                          f"{path} does not exist here", *([entry] if entry else []))  # fmt: skip

    def relays(self) -> None:
        relay = self.all("relay-ip")
        if relay:
            self.set("relay_ip", list(dict.fromkeys(self.ip(e) for e in relay)), *relay)
        low, high = self.last("min-port"), self.last("max-port")
        if low or high:
            lo = self.port(low) if low else 49152
            hi = self.port(high) if high else 65535
            self.set("relay_ports", f"{lo}-{hi}", low, high)
        external = self.all("external-ip")
        if external:
            first = external[0]
            public, _, private = self.value(first).partition("/")
            try:
                parts = [str(ipaddress.ip_address(p.strip())) for p in (public, private) if p]
            except ValueError:
                self.note("unsupported", "external-ip",
                          f"{first.value!r}: iceward needs the address itself (coturn resolved "
                          "names); set external_ip by hand", first)  # fmt: skip
            else:
                self.set("external_ip", "/".join(parts), first)
            if len(external) > 1:
                self.note("unsupported", "external-ip",
                          "iceward advertises one external mapping: the first was taken; give "
                          "each further relay address its own node", *external[1:])  # fmt: skip
        threads = self.last("relay-threads")
        if threads:
            self.set("workers", max(1, self.number(threads)), threads)

    def credentials(self) -> None:
        realm = self.last("realm")
        if realm:
            self.set("realm", self.value(realm), realm)
        secrets = self.all("static-auth-secret")
        use_secret = self.on("use-auth-secret")
        if secrets:
            self.set("secret", list(dict.fromkeys(self.value(e) for e in secrets)), *secrets)
        if use_secret:
            if secrets:
                self.note("built-in", "use-auth-secret", "REST credentials are on", use_secret)
            else:
                self.note(
                    "elsewhere", "use-auth-secret",
                    "coturn read its REST secrets from its database: add them with `iceward "
                    "secrets add NAME` (until then iceward generates one into its data dir)",
                    use_secret,
                )  # fmt: skip
        users = self.all("user")
        rest = bool(secrets) or use_secret is not None
        if users and rest:
            names = ", ".join(dict.fromkeys(self.value(e).partition(":")[0] for e in users))
            self.note(
                "warning", "user",
                f"static users not imported ({names}): coturn ignores them while REST secrets "
                "are on; iceward would accept both, so add them to user only if you want them",
                *users,
            )  # fmt: skip
        elif users:
            keep = []
            for entry in users:
                spec = self.value(entry)
                try:
                    name, secret = parse_user(spec)
                except ValueError:
                    raise self.fail(entry, "must be NAME:PASSWORD or NAME:0xKEY") from None
                if isinstance(secret, str) and secret.startswith("0x") and _is_hex(secret[2:]):
                    self.note("unsupported", "user",
                              f"{name}: a 0x key of {len(secret) - 2} hex digits (not MD5's 32) "
                              "cannot be carried over; add the user with its password",
                              entry)  # fmt: skip
                    continue
                if isinstance(secret, bytes) and realm is None:
                    self.note("warning", "user",
                              f"{name}: a 0x key is MD5 of name:realm:password, and this config "
                              "sets no realm; set realm to the one turnadmin -k used",
                              entry)  # fmt: skip
                keep.append(entry)
            if keep:
                self.set("user", [self.value(e) for e in keep], *keep)
        no_auth = self.on("no-auth")
        if no_auth:
            self.note("unsupported", "no-auth", BY_NAME["no-auth"].note, no_auth)
        lt = self.on("lt-cred-mech")
        if lt:
            self.note("built-in", "lt-cred-mech", BY_NAME["lt-cred-mech"].note, lt)
        if not rest and not users and not lt and not no_auth:
            self.note("differs", "auth", _difference("auth"))

    def peers(self) -> None:
        loopback = self.on("allow-loopback-peers")
        no_multicast = self.on("no-multicast-peers")
        excluded = [*NEVER_ALLOWED, *([] if loopback else _LOOPBACK)]
        excluded += _MULTICAST if no_multicast else []
        allow: list[IPNetwork] = []
        allow_from: list[Entry] = []
        if loopback:
            allow += [ipaddress.ip_network(n) for n in _LOOPBACK]
            allow_from.append(loopback)
        for entry in self.all("allowed-peer-ip"):
            nets = self.networks(entry)
            kept = _exclude(nets, [ipaddress.ip_network(n) for n in excluded])
            if _addresses(kept) != _addresses(nets):
                left_out = _left_out(loopback is not None, no_multicast is not None)
                self.note("warning", entry.name, f"{entry.value}: {left_out} left out", entry)
            opened = sorted({why for net in kept for why in _default_denied(net)})
            if opened:
                self.note("warning", entry.name,
                          f"{entry.value} opens what iceward denies by default: "
                          f"{', '.join(opened)}", entry)  # fmt: skip
            if kept:
                allow += kept
                allow_from.append(entry)
        if allow:
            self.set("allow_peer", [str(n) for n in dict.fromkeys(allow)], *allow_from)
        deny: list[IPNetwork] = []
        deny_from: list[Entry] = []
        for entry in self.all("denied-peer-ip"):
            nets = self.networks(entry)
            extra = [n for n in nets if not _inside_default_denied(n)]
            if len(extra) < len(nets):
                self.note("built-in", entry.name,
                          f"{entry.value}: denied by default (not repeated)", entry)  # fmt: skip
            if extra:
                deny += extra
                deny_from.append(entry)
        if deny:
            self.set("deny_peer", [str(n) for n in dict.fromkeys(deny)], *deny_from)
        if no_multicast:
            self.note("built-in", "no-multicast-peers", "multicast peers are denied by default",
                      no_multicast)  # fmt: skip
        self.note("differs", "peers", _difference("peers"))

    def limits(self) -> None:
        user_quota = self.last("user-quota")
        if user_quota:
            self.set("max_allocations_per_user", self.number(user_quota), user_quota)
        total = self.last("total-quota")
        if total and self.number(total) > 0:
            self.set("max_allocations", self.number(total), total)
        else:
            self.note(
                "differs", "total-quota", _difference("total-quota"), *([total] if total else [])
            )
        lifetime = self.last("max-allocate-lifetime")
        if lifetime:
            seconds = self.number(lifetime, 3600)
            self.set("max_lifetime", seconds, lifetime)
            if seconds < 600:
                self.set("default_lifetime", seconds, lifetime)
        nonce = self.last("stale-nonce")
        if nonce:
            seconds = self.number(nonce, 600)
            if seconds == 0:
                self.note("unsupported", "stale-nonce",
                          "0 (nonces that never expire): iceward's nonces always do (600 s)",
                          nonce)  # fmt: skip
            else:
                self.set("nonce_lifetime", seconds, nonce)
        no_tcp_relay = self.on("no-tcp-relay")
        if no_tcp_relay:
            self.set("tcp_relay", False, no_tcp_relay)
        for option, key in (("max-bps", "max_bps"), ("bps-capacity", "bps_capacity")):
            entry = self.last(option)
            if entry:
                self.set(key, self.number(entry), entry)
        for option, key, default in (
            ("channel-lifetime", "channel_lifetime", 600),
            ("permission-lifetime", "permission_lifetime", 300),
        ):
            entry = self.last(option)
            if entry:
                self.set(key, self.number(entry, default), entry)
        verbose = [e for e in (self.on("verbose"), self.on("Verbose")) if e]
        if verbose:
            self.set("log_level", "debug", *verbose)

    def others(self) -> None:
        """Every option not handled above: a note from its row, or "unknown"."""
        family = self.last("allocation-default-address-family")
        if family and family.value.lower() != "ipv4":
            self.note("unsupported", family.name, "the relay's family follows "
                      "REQUESTED-ADDRESS-FAMILY, IPv4 by default (RFC 8656)", family)  # fmt: skip
        separator = self.last("rest-api-separator")
        if separator and separator.value != ":":
            self.note("unsupported", separator.name,
                      "REST usernames are EXPIRY:USER (coturn's default separator)",
                      separator)  # fmt: skip
        seen: dict[str, list[Entry]] = {}
        for entry in self.entries:
            if entry.name not in self.handled:  # noted by a handler
                seen.setdefault(entry.name, []).append(entry)
        for name, entries in seen.items():
            row = BY_NAME.get(name)
            if row is None:
                hint = (
                    " (coturn reads names without leading dashes)" if name.startswith("-") else ""
                )
                self.note("unknown", name, f"not a coturn option: coturn ignores it too{hint}",
                          *entries)  # fmt: skip
            elif row.status != "setting":
                self.note(row.status, name, row.note, *entries)

    def differences(self) -> None:
        if "listen" not in self.settings:
            self.note(
                "differs", "listen",
                "coturn listened on every local address (IPv4 and IPv6) without listening-ip; "
                "iceward listens on 0.0.0.0: add \"::\" to listen for IPv6",
            )  # fmt: skip
        self.note("differs", "http", _difference("http"))

    def check(self) -> None:
        try:
            _FileOnly(**self.settings)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else ""
            origin = self.origins.get(key) or [e for es in self.origins.values() for e in es]
            message = str(err["msg"]).removeprefix("Value error, ")
            entry = origin[-1] if origin else None
            if entry is None:
                raise ImportFailure(self.source, 0, message) from None
            raise self.fail(entry, f"iceward's {key or 'settings'}: {message}") from None


# -- helpers ------------------------------------------------------------------------------------


def _difference(topic: str) -> str:
    return dict(DIFFERENCES)[topic]


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def _exclude(nets: Iterable[IPNetwork], excluded: Sequence[IPNetwork]) -> list[IPNetwork]:
    """``nets`` without any address of ``excluded``, as CIDRs."""
    out: list[IPNetwork] = []
    todo = list(nets)
    while todo:
        net = todo.pop(0)
        for ex in excluded:
            if ex.version != net.version or not net.overlaps(ex):
                continue
            if net.subnet_of(ex):  # type: ignore[arg-type]
                break
            todo[:0] = sorted(net.address_exclude(ex))  # type: ignore[arg-type]
            break
        else:
            out.append(net)
    return sorted(out, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


def _addresses(nets: Iterable[IPNetwork]) -> int:
    return sum(n.num_addresses for n in nets)


def _left_out(loopback: bool, no_multicast: bool) -> str:
    parts = ["0.0.0.0/8 and ::"]
    if not loopback:
        parts.append("loopback (no allow-loopback-peers)")
    if no_multicast:
        parts.append("multicast (no-multicast-peers)")
    return ", ".join(parts)


_DENIED = [(ipaddress.ip_network(n), why) for n, why in DEFAULT_DENIED]


def _default_denied(net: IPNetwork) -> set[str]:
    """The reasons of the default-denied ranges ``net`` opens."""
    return {
        why
        for denied, why in _DENIED
        if denied.version == net.version
        and net.overlaps(denied)
        and str(denied) not in NEVER_ALLOWED
    }


def _inside_default_denied(net: IPNetwork) -> bool:
    return any(
        d.version == net.version and net.subnet_of(d)  # type: ignore[arg-type]
        for d, _ in _DENIED
    )


# -- TOML ---------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's (\" \\ \n \t \uXXXX), but for DEL, which JSON leaves raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _comment(text: str, indent: str = "") -> list[str]:
    clean = _CONTROL.sub("?", text)
    return textwrap.wrap(
        clean, 98, initial_indent="# " + indent, subsequent_indent="#   " + indent
    ) or ["#"]


def render_toml(result: Result) -> str:
    lines = [
        f"# iceward settings translated from coturn's {result.source} by `iceward import-coturn`",
        f"# (iceward {__version__}). Start with: iceward serve --config THIS-FILE",
        "# It may hold secrets (static-auth-secret, user): keep it private.",
        "",
    ]
    for key, value in result.settings.items():
        origin = result.origins.get(key, [])
        names = ", ".join(dict.fromkeys(e.name for e in origin))
        numbers = sorted({e.line for e in origin})
        if names:
            plural = "s" if len(numbers) > 1 else ""
            lines.append(f"# coturn: {names} (line{plural} {', '.join(map(str, numbers))})")
        lines.append(f"{key} = {toml_value(value)}")
    titles = {
        "unknown": "Not coturn options (coturn ignores them too)",
        "unsupported": "Not carried over: iceward has no equivalent",
        "elsewhere": "Not carried over: iceward does this another way",
        "warning": "Check",
        "differs": "Defaults that differ from coturn's",
        "built-in": "Already iceward's behaviour (nothing to write)",
    }
    for kind, title in titles.items():
        notes = grouped(n for n in result.notes if n.kind == kind)
        if not notes:
            continue
        lines += ["", f"# {title}:"]
        for _, labels, text in notes:
            lines += _comment(f"- {labels}: {text}")
    return "\n".join(lines) + "\n"
