"""Every coturn option (4.6 and later) and what becomes of it in iceward.

The translation (:mod:`iceward.coturn.convert`) writes the settings a ``setting`` row names and
notes every other row; the README's "Coming from coturn" map is :func:`markdown` of this table
(``python -m iceward.coturn.table README.md`` rewrites it), and a test imports each row's
example alone and checks the settings it produces against the row.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: ``setting``: written to iceward's TOML; ``built-in``: iceward already behaves so, nothing to
#: write; ``elsewhere``: iceward does it another way (the note says how); ``unsupported``: no
#: equivalent (the note says why and what iceward does instead).
Status = Literal["setting", "built-in", "elsewhere", "unsupported"]


@dataclass(frozen=True, slots=True)
class Row:
    names: tuple[str, ...]
    status: Status
    note: str
    #: The iceward settings written (``setting`` rows).
    settings: tuple[str, ...] = ()
    #: Config lines that exercise the row (default: the first name as a flag).
    example: str = ""

    @property
    def example_text(self) -> str:
        return self.example or self.names[0]


_METRICS = (
    "GET /metrics on the HTTP API (`http`, default 127.0.0.1:8080; set an address Prometheus "
    "reaches, and firewall it); no user names as labels"
)
_LOGS = (
    "iceward logs to stderr: under systemd that is the journal, which rotates, ships and "
    'timestamps; `log_level` sets the detail, `log_format = "json"` one object a line'
)
_PROCESS = (
    "run it under systemd: `deploy/systemd/iceward.service` (a dedicated user, no fork, no pid "
    "file)"
)
_CLI = (
    "no telnet CLI: the admin API (`/admin/v1/...`, loopback and an admin key) and "
    "`iceward users|secrets|keys` commands"
)
_DATABASE = (
    "iceward keeps users, secrets and API keys in its own store (SQLite in `data_dir`, or "
    "`database`, a SQLAlchemy URL); coturn's database is not read: move users with "
    '`iceward users add` (or `user = ["NAME:0xKEY"]`) and secrets with `iceward secrets add`'
)
_TLS = (
    "TLS uses Python's ssl defaults with TLS 1.2 as the minimum: no cipher, curve or DH knobs, "
    "no client certificates"
)
_REDIRECT = (
    "no redirect of every Allocate: a node answers its clients itself (spread load over nodes "
    "with DNS, over cores with `workers`); ALTERNATE-SERVER is sent only while a node drains, "
    "to `alternate_server` / `tls_alternate_server` (see Draining)"
)
_AUTH_KINDS = (
    "no ORIGIN checks, MICE mobility or OAuth access tokens: TURN REST credentials and static "
    "users only"
)

ROWS: tuple[Row, ...] = (
    # -- translated -------------------------------------------------------------------------------
    Row(("listening-ip",), "setting",
        "one entry each (coturn listened on every local address, IPv6 too, without it; iceward "
        "listens on 0.0.0.0: add `::` for IPv6)", ("listen",), "listening-ip=192.0.2.10"),
    Row(("listening-port",), "setting", "", ("port",), "listening-port=3479"),
    Row(("tls-listening-port",), "setting",
        "coturn serves TLS only with a certificate, so without `cert`/`pkey` the import turns "
        "TLS off (`tls_port = 0`) rather than serve iceward's self-signed fallback",
        ("tls_port",), "tls-listening-port=443"),
    Row(("cert", "pkey"), "setting",
        "relative paths are resolved against the config's directory, as coturn searches it",
        ("cert", "key"), "cert=/etc/ssl/turn.pem\npkey=/etc/ssl/turn.key"),
    Row(("no-tls",), "setting", "`tls_port = 0`", ("tls_port",)),
    Row(("relay-ip",), "setting", "one entry each", ("relay_ip",), "relay-ip=192.0.2.10"),
    Row(("min-port", "max-port"), "setting",
        "`LOW-HIGH`; a bound not given keeps coturn's default (49152, 65535)",
        ("relay_ports",), "min-port=50000\nmax-port=50999"),
    Row(("external-ip",), "setting",
        "the same `PUBLIC[/PRIVATE]` form; iceward takes one mapping (the first)",
        ("external_ip",), "external-ip=203.0.113.10/10.0.0.10"),
    Row(("realm",), "setting", "", ("realm",), "realm=example.org"),
    Row(("static-auth-secret",), "setting",
        "one entry each, all accepted (rotation); it turns REST credentials on, as in coturn",
        ("secret",), "static-auth-secret=s3cret"),
    Row(("user",), "setting",
        "the same `NAME:PASSWORD` / `NAME:0xKEY` form (a 0x key is MD5 of name:realm:password, so "
        "keep the realm); coturn ignores static users once REST secrets are on, so the import "
        "leaves them out then and names them",
        ("user",), "user=alice:wonderland"),
    Row(("allow-loopback-peers",), "setting", "`127.0.0.0/8` and `::1/128` in `allow_peer`",
        ("allow_peer",)),
    Row(("allowed-peer-ip",), "setting",
        "an IP or a range `A-B`, as the CIDRs covering exactly it; `0.0.0.0/8` and `::` (never "
        "relayed to) and loopback (which coturn refused unless `allow-loopback-peers`) are "
        "left out",
        ("allow_peer",), "allowed-peer-ip=10.1.0.0-10.1.0.255"),
    Row(("denied-peer-ip",), "setting",
        "the same conversion; ranges iceward denies by default are not repeated",
        ("deny_peer",), "denied-peer-ip=83.166.64.0-83.166.95.255"),
    Row(("user-quota",), "setting", "0 is unlimited in both", ("max_allocations_per_user",),
        "user-quota=12"),
    Row(("total-quota",), "setting",
        "coturn's 0 (unlimited) keeps iceward's cap of 10,000", ("max_allocations",),
        "total-quota=1200"),
    Row(("max-allocate-lifetime",), "setting",
        "below 600 s the default lifetime follows it", ("max_lifetime",),
        "max-allocate-lifetime=7200"),
    Row(("stale-nonce",), "setting", "a bare flag means 600 s", ("nonce_lifetime",),
        "stale-nonce=300"),
    Row(("no-tcp-relay",), "setting", "TCP Allocates get 442, as in coturn", ("tcp_relay",)),
    Row(("max-bps",), "setting",
        "bytes per second each direction, per allocation, in both (UDP relays drop what is over, "
        "TCP relays wait); 0 is no limit in both", ("max_bps",), "max-bps=250000"),
    Row(("bps-capacity",), "setting", "the node's, the same units", ("bps_capacity",),
        "bps-capacity=12500000"),
    Row(("channel-lifetime",), "setting", "", ("channel_lifetime",), "channel-lifetime=600"),
    Row(("permission-lifetime",), "setting", "", ("permission_lifetime",),
        "permission-lifetime=300"),
    Row(("relay-threads",), "setting",
        "iceward's workers are processes sharing the ports; 0 (single-threaded) is one worker",
        ("workers",), "relay-threads=4"),
    Row(("verbose", "Verbose"), "setting", "`log_level = \"debug\"`", ("log_level",)),
    Row(("alt-listening-port", "rfc5780"), "setting",
        "RFC 5780 with two listening IPs of one family: iceward listens on the first and answers "
        "NAT behaviour discovery on the second too (`alternate_address = \"SECOND:ALT-PORT\"`, "
        "the port defaulting to port + 1); other layouts are listed for a hand edit",
        ("listen", "alternate_address"),
        "listening-ip=192.0.2.10\nlistening-ip=192.0.2.11\nalt-listening-port=3479"),
    # -- already iceward's behaviour -------------------------------------------------------------
    Row(("lt-cred-mech",), "built-in", "long-term credentials are always on"),
    Row(("use-auth-secret",), "built-in",
        "REST credentials are on whenever a secret is set; without `static-auth-secret` coturn "
        "read its secrets from its database: add them with `iceward secrets add`, or iceward "
        "generates one into its data dir"),
    Row(("fingerprint",), "built-in", "FINGERPRINT is answered whenever the request has one"),
    Row(("no-dtls",), "built-in", "there is no DTLS listener"),
    Row(("no-multicast-peers", "no-loopback-peers"), "built-in",
        "multicast and loopback peers are denied by default"),
    Row(("no-cli",), "built-in", "there is no telnet CLI"),
    Row(("no-rfc5780",), "built-in", "RFC 5780 is answered only with `alternate_address`"),
    Row(("no-stun-backward-compatibility",), "built-in",
        "Binding answers carry XOR-MAPPED-ADDRESS only"),
    Row(("response-origin-only-with-rfc5780",), "built-in",
        "RESPONSE-ORIGIN is sent only with `alternate_address`"),
    Row(("rfc5766-channel-numbers",), "built-in", "channels 0x4000-0x7FFE are accepted"),
    Row(("no-tlsv1", "no-tlsv1_1", "no-sslv2", "no-sslv3"), "built-in",
        "TLS 1.2 is the minimum"),
    Row(("no-auth-pings", "no-dynamic-ip-list", "no-dynamic-realms"), "built-in",
        "nothing is polled from a database: peer rules and the realm are settings"),
    Row(("software-attribute",), "built-in", "SOFTWARE is always sent"),
    Row(("stateless-nonce",), "built-in", "nonces are stateless HMACs, valid on every worker"),
    Row(("udp-recvmmsg", "udp-gso", "udp-recvmmsg-log", "udp-sendmmsg-log"), "built-in",
        "the native relay path batches with recvmmsg/sendmmsg and UDP GSO/GRO"),
    Row(("drop-invalid-packets", "drop-invalid-packets-log", "include-reason-string"),
        "built-in", "malformed datagrams are dropped and counted; errors carry a reason phrase"),
    Row(("version", "ne"), "built-in", "nothing to carry over"),
    Row(("allocation-default-address-family",), "built-in",
        "IPv4 unless the client asks (RFC 8656); `ipv6` or `keep` are not supported",
        example="allocation-default-address-family=ipv4"),
    Row(("rest-api-separator",), "built-in",
        "REST usernames are `EXPIRY:USER`; another separator is not supported",
        example="rest-api-separator=:"),
    # -- done another way -----------------------------------------------------------------------
    Row(("prometheus", "prometheus-port", "prometheus-address", "prometheus-path",
         "prometheus-username-labels", "prometheus-tls", "prometheus-cert", "prometheus-key"),
        "elsewhere", _METRICS),
    Row(("log-file", "syslog", "syslog-facility", "no-stdout-log", "simple-log",
         "new-log-timestamp", "new-log-timestamp-format", "log-min-level", "log-binding"),
        "elsewhere", _LOGS),
    Row(("pidfile", "proc-user", "proc-group", "daemon"), "elsewhere", _PROCESS),
    Row(("cli", "cli-ip", "cli-port", "cli-password", "cli-max-output-sessions"), "elsewhere",
        _CLI),
    Row(("web-admin", "web-admin-ip", "web-admin-port", "web-admin-listen-on-workers"),
        "elsewhere", "the HTTP API (`http`), its OpenAPI docs at /docs"),
    Row(("userdb", "db", "psql-userdb", "sql-userdb", "mysql-userdb", "mongo-userdb",
         "redis-userdb", "secret-key-file"), "elsewhere", _DATABASE),
    Row(("redis-statsdb",), "elsewhere",
        "allocations and traffic: /metrics and GET /admin/v1/allocations"),
    Row(("secret-ts-exp-time",), "elsewhere",
        "a REST credential lives until the expiry in its username; `max_credential_ttl` caps it"),
    Row(("stateless-nonce-secret",), "elsewhere", "the nonce key is kept in the data dir"),
    Row(("cpus",), "elsewhere", "`workers` (one per core by default)"),
    Row(("max-allocate-timeout",), "elsewhere",
        "`connection_timeout` bounds a TCP/TLS connection's TLS and first request"),
    Row(("unauthorized-ratelimit", "unauthorized-ratelimit-rps"), "elsewhere",
        "`max_auth_failures` (per source IP a minute) and `max_challenges` (401s per UDP source "
        "a second), on by default"),
    Row(("drain-min-allocations",), "elsewhere",
        "SIGTERM ends every allocation (logging its traffic) and exits"),
    Row(("acme-redirect",), "elsewhere",
        "iceward gets its certificate itself: `acme = [\"turn.example.org\"]` (TLS-ALPN-01 on "
        "the TLS port, or HTTP-01 on `acme_http`); or point `cert`/`key` at your ACME client's "
        "files (SIGHUP reloads them)"),
    Row(("listening-device", "relay-device"), "elsewhere",
        "bind by address: `listen` and `relay_ip`"),
    Row(("aux-server", "alternate-server", "tls-alternate-server", "tcp-alternate-server",
         "udp-alternate-server", "udp-self-balance"), "elsewhere", _REDIRECT),
    # -- not supported --------------------------------------------------------------------------
    Row(("no-auth",), "unsupported",
        "iceward never relays without authentication (with no secret and no user it generates "
        "a REST secret into its data dir)"),
    Row(("no-udp", "no-tcp"), "unsupported",
        "the port always serves UDP and TCP together; to refuse one, leave its rule out of "
        "`iceward firewall`"),
    Row(("dtls",), "unsupported", "no DTLS listener (browsers do not use DTLS to TURN)"),
    Row(("no-udp-relay",), "unsupported", "UDP relays are always served"),
    Row(("stun-only", "no-stun", "secure-stun"), "unsupported",
        "STUN Binding is always answered without authentication, and TURN is always on"),
    Row(("tcp-proxy-port",), "elsewhere",
        "no separate port: the TCP and TLS ports read a PROXY v1/v2 header from the load "
        "balancers listed in `proxy_protocol_from` (CIDRs)"),
    Row(("pkey-pwd",), "unsupported",
        "iceward reads an unencrypted key: `openssl pkey -in KEY -out PLAIN` (keep it 0600)"),
    Row(("cipher-list", "ec-curve-name", "dh566", "dh1066", "dh-file", "no-tlsv1_2", "tlsv1",
         "tlsv1_1", "CA-file", "raw-public-keys"), "unsupported", _TLS),
    Row(("no-software-attribute", "prod"), "unsupported",
        "SOFTWARE (iceward and its version) is always sent"),
    Row(("check-origin-consistency", "mobility", "oauth", "server-name"), "unsupported",
        _AUTH_KINDS),

    Row(("keep-address-family",), "unsupported",
        "the relay's family follows REQUESTED-ADDRESS-FAMILY, IPv4 by default (RFC 8656)"),
    Row(("server-relay",), "unsupported",
        "permissions are always checked (RFC 8656); this coturn option turns them off"),
    Row(("sock-buf-size",), "unsupported", "socket buffers follow the kernel's settings"),
    Row(("stun-backward-compatibility", "rfc3489-compatibility"), "unsupported",
        "classic RFC 3489 requests are not answered (every browser speaks RFC 5389 and later)"),
    Row(("respond-http-unsupported",), "unsupported",
        "nothing answers HTTP on the TURN port; the HTTP API has its own"),
    Row(("multiplex-peer", "multiplex-peer-port", "multiplex-peer-max-peers"), "unsupported",
        "one relay port per allocation"),
    Row(("alt-tls-listening-port",), "unsupported",
        "RFC 5780 is answered over UDP (what NAT behaviour discovery uses)"),
)  # fmt: skip

BY_NAME: dict[str, Row] = {name: row for row in ROWS for name in row.names}

#: Where coturn's defaults and iceward's differ, whatever the config says: (topic, text).
DIFFERENCES: tuple[tuple[str, str], ...] = (
    ("peers",
     "coturn relays to private (RFC 1918), carrier-grade NAT, link-local and cloud metadata "
     "(169.254.169.254) addresses unless `denied-peer-ip` says otherwise; iceward refuses them, "
     "and multicast and reserved ranges, by default, so a TURN client cannot reach into your "
     "network. A peer on your own network (an SFU, a recorder) needs `allow_peer = "
     "[\"10.0.0.0/8\"]`."),
    ("http",
     "iceward also serves an HTTP API on 127.0.0.1:8080: short-lived credentials for your "
     "backend, /metrics, the admin routes and the browser test page (`http = \"off\"` turns it "
     "off)."),
    ("auth",
     "coturn without `lt-cred-mech`, `user` or a secret relays for anyone; iceward always "
     "authenticates TURN: with no secret and no user it generates a REST secret into its data "
     "dir and prints iceServers with a credential."),
    ("total-quota",
     "coturn allows unlimited allocations by default; iceward caps them at 10,000 "
     "(`max_allocations`)."),
    ("tls",
     "coturn serves no TLS without a certificate; iceward generates a self-signed one (browsers "
     "refuse it for `turns:`), so the import writes `tls_port = 0` when coturn had none."),
)  # fmt: skip

_STATUS_TITLES: dict[Status, str] = {
    "setting": "Translated",
    "built-in": "Already iceward's behaviour (nothing to write)",
    "elsewhere": "Done another way",
    "unsupported": "Not supported",
}

BEGIN = "<!-- coturn-map:begin (generated by python -m iceward.coturn.table README.md) -->"
END = "<!-- coturn-map:end -->"


def _names(row: Row) -> str:
    return ", ".join(f"`{n}`" for n in row.names)


def markdown() -> str:
    """The option map and the defaults that differ, as README markdown."""
    out: list[str] = []
    for status, title in _STATUS_TITLES.items():
        rows = [r for r in ROWS if r.status == status]
        out.append(f"**{title}**\n")
        if status == "setting":
            out.append("| coturn | iceward setting | how |")
            out.append("|---|---|---|")
            for r in rows:
                settings = ", ".join(f"`{s}`" for s in r.settings)
                out.append(f"| {_names(r)} | {settings} | {r.note or 'as is'} |")
        else:
            out.append("| coturn | iceward |")
            out.append("|---|---|")
            for r in rows:
                out.append(f"| {_names(r)} | {r.note} |")
        out.append("")
    out.append("**Defaults that differ**\n")
    for topic, text in DIFFERENCES:
        out.append(f"- *{topic}*: {text}")
    return "\n".join(out) + "\n"


def readme_block() -> str:
    return f"{BEGIN}\n{markdown()}{END}"


def rewrite_readme(path: Path) -> bool:
    """Replace the generated block in ``path``; True when the file changed."""
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN!r} ... {END!r} block")
    new = pattern.sub(lambda _: readme_block(), text)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    if len(sys.argv) > 1:
        rewrite_readme(Path(sys.argv[1]))
    else:
        sys.stdout.write(markdown())
