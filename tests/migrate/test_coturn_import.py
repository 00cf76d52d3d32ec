"""``iceward import-coturn``: coturn's syntax, the option table against the translation, Debian's
shipped config and coturn's example, hand-made configs, errors, and a coturn replaced by the
iceward its config imports to, judged the same by the doctor."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from iceward.cli import app
from iceward.config import ServerSettings, load_settings
from iceward.coturn.convert import translate
from iceward.coturn.parse import parse
from iceward.coturn.table import BY_NAME, ROWS, readme_block
from iceward.turn.credentials import mint_rest_credential
from tests.conftest import CertAuthority, require_tool, stop_process, stun_binding
from tests.doctor.conftest import REALM, SECRET, DoctorRun, doctor, ice

DEBIAN_CONF = Path("/etc/turnserver.conf")
EXAMPLE_CONF = Path("/usr/share/doc/coturn/examples/etc/turnserver.conf")
README = Path(__file__).resolve().parents[2] / "README.md"


def run_import(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["import-coturn", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def imported(text: str, tmp_path: Path) -> dict[str, Any]:
    conf = tmp_path / "turnserver.conf"
    conf.write_text(text)
    return translate(parse(text, conf), conf).settings


def test_syntax_is_coturns(tmp_path: Path) -> None:
    conf = tmp_path / "turnserver.conf"
    text = (
        "# a comment\n"
        "   # an indented comment\n"
        "\n"
        "listening-port 3479\n"  # key value
        "realm=\t example.org  \n"  # separators run together, trailing blanks go
        'static-auth-secret="two words"\n'  # quotes go
        "static-auth-secret = second\n"  # repeated
        "no-tls\n"  # bare flag
        "verbose=off\n"  # a flag turned off
        "cli-password=x # not a comment\n"
    )
    entries = parse(text, conf)
    assert [(e.name, e.value, e.line) for e in entries] == [
        ("listening-port", "3479", 4),
        ("realm", "example.org", 5),
        ("static-auth-secret", "two words", 6),
        ("static-auth-secret", "second", 7),
        ("no-tls", "", 8),
        ("verbose", "off", 9),
        ("cli-password", "x # not a comment", 10),
    ]
    assert translate(entries, conf).settings == {
        "port": 3479,
        "tls_port": 0,
        "realm": "example.org",
        "secret": ["two words", "second"],
    }


BASE = "cert=/etc/ssl/base.pem\npkey=/etc/ssl/base.key\n"


def test_each_row_of_the_table_is_what_the_import_does(tmp_path: Path) -> None:
    """The table the README shows is checked against the translation, row by row: a setting row's
    example writes exactly its settings; any other option writes nothing and is noted."""
    base = imported(BASE, tmp_path)
    conf = tmp_path / "turnserver.conf"
    for row in ROWS:
        assert set(row.settings) <= set(ServerSettings.model_fields), row
        examples = [row.example_text] if row.status == "setting" else list(row.names)
        if row.example and row.status != "setting":
            examples[0] = row.example
        for text in examples:
            result = translate(parse(BASE + text + "\n", conf), conf)
            changed = {k for k, v in result.settings.items() if base.get(k, object()) != v}
            assert changed == set(row.settings), text
            if row.status != "setting":
                name = text.split("=")[0]
                assert name in {n.option for n in result.notes if n.kind != "differs"}, text


def test_readme_option_map_is_the_table() -> None:
    assert readme_block() in README.read_text(), (
        "README's coturn option map is stale: .venv/bin/python -m iceward.coturn.table README.md"
    )


def test_debian_shipped_config(tmp_path: Path) -> None:
    if not DEBIAN_CONF.is_file():
        pytest.skip("coturn's /etc/turnserver.conf is not installed")
    out = tmp_path / "iceward.toml"
    code, _, err = run_import(str(DEBIAN_CONF), "-o", str(out))
    assert code == 0, err
    # Debian's file is comments but for syslog and three STUN details iceward has built in.
    assert tomllib.loads(out.read_text()) == {"tls_port": 0}
    assert "done another way: syslog" in err
    assert "coturn without `lt-cred-mech`, `user` or a secret relays for anyone" in err
    assert ", 0 unknown" in err.splitlines()[0] and "no-rfc5780" in out.read_text()
    assert load_settings(out).tls_port == 0


def test_every_option_in_coturns_example_config(tmp_path: Path) -> None:
    """coturn's example config with every option line uncommented: each one is known, and what
    comes out is a config iceward loads."""
    if not EXAMPLE_CONF.is_file():
        pytest.skip("coturn's example config is not installed")
    text = re.sub(
        r"^#([a-zA-Z][a-zA-Z0-9_-]*(=.*|\s*))$", r"\1", EXAMPLE_CONF.read_text(), flags=re.M
    )
    conf = tmp_path / "turnserver.conf"
    conf.write_text(text)
    options = {e.name for e in parse(text, conf)}
    assert len(options) > 90
    assert options <= set(BY_NAME)
    out = tmp_path / "iceward.toml"
    code, _, err = run_import(str(conf), "-o", str(out))
    assert code == 0, err
    assert ", 0 unknown" in err.splitlines()[0]
    settings = load_settings(out, data_dir=tmp_path / "data")
    assert settings.listen == ["172.17.19.101", "10.207.21.238", "2607:f0d0:1002:51::4"]
    assert settings.external_ip == "60.70.80.91" and settings.secret == ["north"]
    assert settings.user == []  # coturn ignores them next to a static-auth-secret
    assert "static users not imported (username1, username2, ninefingers)" in err
    assert settings.tls_port == 0 and settings.workers == 1  # no-tls; relay-threads=0
    for option in ("cli-password", "userdb", "no-auth", "pkey-pwd", "prometheus", "log-file"):
        assert re.search(rf"^  (not supported|done another way): .*\b{option} \(line", err, re.M)


def test_hand_made_config(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    conf = tmp_path / "turnserver.conf"
    conf.write_text(
        "listening-ip=192.0.2.10\n"
        "listening-port=3479\n"
        "tls-listening-port=443\n"
        "cert=tls/cert.pem\n"  # relative: against the config's directory
        "pkey=/etc/ssl/turn.key\n"
        "min-port=40000\n"
        "realm=north.gov\n"
        "lt-cred-mech\n"
        "user=ninefingers:0xbc807ee29df3c9ffa736523fb2c4e8ee\n"
        "user=bob:builder\n"
        "denied-peer-ip=10.0.0.0-10.255.255.255\n"  # already denied by default
        "denied-peer-ip=83.166.64.0-83.166.95.255\n"
        "allowed-peer-ip=192.0.2.5-192.0.2.20\n"
        "allowed-peer-ip=0.0.0.0-255.255.255.255\n"
        "max-allocate-lifetime=300\n"
        "stale-nonce\n"
        "total-quota=0\n"
        "--no-tcp-relay\n"
        "tls-listening-port-typo=1\n"
    )
    out = tmp_path / "iceward.toml"
    code, stdout, err = run_import(str(conf), "-o", str(out))
    assert code == 0, err
    assert stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    s = load_settings(out, data_dir=tmp_path / "data")
    assert (s.listen, s.port, s.tls_port, s.relay_ports) == (
        ["192.0.2.10"],
        3479,
        443,
        "40000-65535",
    )
    assert (s.cert, s.key) == (tmp_path / "tls" / "cert.pem", Path("/etc/ssl/turn.key"))
    assert s.realm == "north.gov"
    assert s.user == ["ninefingers:0xbc807ee29df3c9ffa736523fb2c4e8ee", "bob:builder"]
    assert s.deny_peer == ["83.166.64.0/19"]
    assert (s.max_lifetime, s.default_lifetime, s.nonce_lifetime) == (300, 300, 600)
    assert s.max_allocations == 10_000
    # A range becomes the CIDRs covering exactly it; "allow everything" loses what iceward never
    # relays to (0.0.0.0/8) and loopback (coturn refused it without allow-loopback-peers).
    allow = [ipaddress.ip_network(n) for n in s.allow_peer]
    assert allow[:3] == [ipaddress.ip_network(n) for n in ("192.0.2.5/32", "192.0.2.6/31",
                                                           "192.0.2.8/29")]  # fmt: skip
    covered = {int(a) for n in allow[:5] for a in n}
    assert covered == set(range(int(ipaddress.ip_address("192.0.2.5")),
                                int(ipaddress.ip_address("192.0.2.20")) + 1))  # fmt: skip
    everything = allow[5:]
    assert sum(n.num_addresses for n in everything) == 2**32 - 2 * 2**24
    assert not any(n.overlaps(ipaddress.ip_network("127.0.0.0/8")) for n in everything)
    assert "opens what iceward denies by default" in err and "cloud metadata service" in err
    assert "unknown: --no-tcp-relay (line 18)" in err and "without leading dashes" in err
    assert "tls-listening-port-typo (line 19)" in err
    assert "denied-peer-ip (line 11)" in out.read_text()  # noted as denied by default
    code, _, err = run_import(str(conf), "-o", str(out))
    assert code == 2 and "exists (--force overwrites it)" in err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("listening-port=3478 # default", "listening-port: '3478 # default' is not a number"),
        ("listening-ip=turn.example.org", "listening-ip: 'turn.example.org' is not an IP address"),
        ("denied-peer-ip=10.0.0.9-10.0.0.1", "is not a range LOW-HIGH of one family"),
        ("realm", "realm: needs a value"),
        ("no-tls=maybe", "no-tls: 'maybe' is not a boolean"),
        ("max-allocate-lifetime=30", "lifetime: Input should be greater than or equal to 60"),
        ("user=alice", "user: must be NAME:PASSWORD or NAME:0xKEY"),
    ],
)
def test_errors_name_file_and_line(line: str, message: str, tmp_path: Path) -> None:
    conf = tmp_path / "turnserver.conf"
    conf.write_text(f"# first\nrealm=x\n{line}\n")
    code, stdout, err = run_import(str(conf))
    assert code == 2 and stdout == ""
    assert err.startswith(f"iceward import-coturn: error: {conf}:3: "), err
    assert message in err


def test_unreadable_file(tmp_path: Path) -> None:
    code, _, err = run_import(str(tmp_path / "missing.conf"))
    assert code == 2 and "missing.conf: cannot read it: No such file or directory" in err
    (tmp_path / "latin1.conf").write_bytes(b"realm=x\nrealm=caf\xe9\n")
    code, _, err = run_import(str(tmp_path / "latin1.conf"))
    assert code == 2 and "latin1.conf:2: not UTF-8 text" in err


# -- coturn replaced by iceward ----------------------------------------------------------------


def coturn_config(work: Path, ca: CertAuthority, port: int, relay: int) -> str:
    """A small production-like coturn config on loopback: REST secret and a static user (which
    coturn ignores next to the secret), TLS, loopback peers for the doctor's data path."""
    return f"""# hand-made coturn config: the one the migration replaces
listening-ip=127.0.0.1
relay-ip=127.0.0.1
listening-port={port}
tls-listening-port={port + 1}
min-port={relay}
max-port={relay + 99}
realm={REALM}
lt-cred-mech
use-auth-secret
static-auth-secret={SECRET}
user=alice:wonderland
cert={ca.cert}
pkey={ca.key}
allow-loopback-peers
denied-peer-ip=10.0.0.0-10.255.255.255
no-multicast-peers
fingerprint
stale-nonce=600
max-allocate-lifetime=3600
user-quota=10
total-quota=100
no-dtls
no-cli
no-rfc5780
pidfile={work / "turnserver.pid"}
userdb={work / "turndb"}
log-file={work / "coturn.log"}
simple-log
no-stdout-log
"""


def wait_stun(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if stun_binding(port) is not None:
            return True
        time.sleep(0.05)
    return False


def start_coturn(work: Path, ca: CertAuthority) -> tuple[subprocess.Popen[bytes], Path, int]:
    """coturn on ports below Linux's ephemeral range (32768-60999), so that iceward can take
    them over when coturn stops; another block is tried when one is busy."""
    binary = require_tool("turnserver")
    for attempt in range(5):
        port = random.randrange(20000, 32000, 2)
        relay = random.randrange(10000, 19900, 100)
        conf = work / f"turnserver{attempt}.conf"
        conf.write_text(coturn_config(work, ca, port, relay))
        log = work / f"coturn{attempt}.out"
        with log.open("wb") as out:
            proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        if wait_stun(proc, port, log):
            return proc, conf, port
        stop_process(proc)
    raise RuntimeError(f"turnserver did not start: {log.read_text(errors='replace')[-2000:]}")


def probe(config: str, ca: CertAuthority) -> DoctorRun:
    """The doctor on an iceServers config (TLS on a port other than 443 is a known weakness)."""
    return doctor("--ice-servers", config, "--ca-file", str(ca.ca_cert), "--ignore", "no-tls-443")


def judged(run: DoctorRun) -> dict[str, Any]:
    """What the doctor concluded, without timings."""
    return {
        "exit": run.code,
        "findings": sorted((f["code"], f["severity"]) for f in run.report["findings"]),
        "summary": re.sub(r"[\d.]+ ms", "N ms", run.report["summary"]),
        "probes": sorted((p["url"], p["outcome"]) for p in run.report["probes"]),
        "datapath": [(d["sent"], d["a_to_b"], d["b_to_a"]) for d in run.report["datapath"]],
    }


@pytest.mark.realclient
@pytest.mark.timeout(120)
def test_imported_config_serves_like_the_coturn_it_replaces(
    ca: CertAuthority, tmp_path: Path
) -> None:
    coturn, conf, port = start_coturn(tmp_path, ca)
    rest = mint_rest_credential(SECRET, "migrated", 86400, time.time())
    urls = [
        f"stun:127.0.0.1:{port}",
        f"turn:127.0.0.1:{port}?transport=udp",
        f"turn:127.0.0.1:{port}?transport=tcp",
        f"turns:127.0.0.1:{port + 1}?transport=tcp",
    ]
    configs = {
        "rest": ice([{"urls": urls, "username": rest.username, "credential": rest.password}]),
        "static": ice([{"urls": urls, "username": "alice", "credential": "wonderland"}]),
    }
    try:
        before = {k: probe(c, ca) for k, c in configs.items()}
    finally:
        stop_process(coturn)

    out = tmp_path / "iceward.toml"
    code, _, err = run_import(str(conf), "-o", str(out))
    assert code == 0, err
    log = tmp_path / "iceward.log"
    argv = [sys.executable, "-m", "iceward", "serve", "--config", str(out),
            "--data-dir", str(tmp_path / "data"), "--http", "off", "--workers", "1"]  # fmt: skip
    with log.open("wb") as sink:
        iceward = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=_env())
    try:
        assert wait_stun(iceward, port, log), log.read_text(errors="replace")
        after = {k: probe(c, ca) for k, c in configs.items()}
    finally:
        stop_process(iceward)

    # The REST credential works on both, data crosses both relays; the static user coturn ignored
    # (REST secrets on) is refused by both.
    assert before["rest"].code == 0 and before["rest"].errors() == [], before["rest"].output
    assert before["rest"].report["datapath"][0]["b_to_a"] == 20
    static = set(before["static"].errors())
    assert static == {"turn-auth-failed", "static-credentials"}, before["static"].output
    for kind in configs:
        assert judged(after[kind]) == judged(before[kind]), (kind, after[kind].output)


def _env() -> dict[str, str]:
    """The environment without ICEWARD_* settings, so that only the imported file speaks."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ICEWARD_")}
