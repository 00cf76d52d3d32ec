"""What a user meets first: ``--version``, help text, and the one-line errors of ``iceward serve``
(exit 2, naming the file, address, port or setting; never a traceback). Real CLI processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from iceward import __version__
from iceward.net.tlsfiles import TlsFilesError, check_tls_files
from tests.conftest import HOST, make_test_ca


def iceward(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iceward", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``iceward serve`` that must refuse to start: its stderr, checked to be one error line
    (after any warnings), exit status 2."""
    proc = iceward(
        "serve",
        "--listen",
        HOST,
        "--port",
        "0",
        "--tls-port",
        "0",
        "--http",
        "off",
        "--data-dir",
        str(tmp_path / "data"),
        *args,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert len([line for line in lines if "error" in line]) == 1, proc.stderr
    return lines[-1]


def test_version_prints_the_version() -> None:
    proc = iceward("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __version__


# -- TLS files: checked once, before any socket or worker ----------------------------------------


def _tls_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    ca = make_test_ca(tmp_path / "ca")
    other = make_test_ca(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    der = tmp_path / "cert.der"
    der.write_bytes(b"\x30\x82\x01\x00" + b"\x00" * 64)
    missing = tmp_path / "missing.pem"
    return [
        ([str(missing), str(ca.key)], f"TLS certificate {missing}: no such file"),
        ([str(ca.cert), str(missing)], f"TLS key {missing}: no such file"),
        ([str(garbage), str(ca.key)], f"TLS certificate {garbage}: no certificate in it"),
        ([str(ca.cert), str(garbage)], f"TLS key {garbage}: no private key in it"),
        ([str(ca.key), str(ca.cert)], f"TLS certificate {ca.key}: a private key, not a cert"),
        ([str(der), str(ca.key)], f"TLS certificate {der}: not PEM"),
        ([str(ca.cert), str(tmp_path)], f"TLS key {tmp_path}: a directory"),
        (
            [str(ca.cert), str(other.key)],
            f"TLS key {other.key} does not belong to the certificate {ca.cert}",
        ),
    ]


def test_each_tls_file_problem_is_named(tmp_path: Path) -> None:
    """The check ``serve`` runs before anything starts (the messages; the CLI below)."""
    for (cert, key), expected in _tls_cases(tmp_path):
        with pytest.raises(TlsFilesError) as raised:
            check_tls_files(Path(cert), Path(key))
        assert expected in str(raised.value), (expected, str(raised.value))
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unusable_cert_or_key_is_one_line_naming_the_file(tmp_path: Path, workers: str) -> None:
    cases = _tls_cases(tmp_path)
    for (cert, key), expected in (cases[0], cases[2], cases[-1]):  # missing, garbage, mismatch
        line = serve(tmp_path, "--workers", workers, "--cert", cert, "--key", key)
        assert line.startswith("iceward: error: cannot start: "), line
        assert expected in line, (expected, line)


# -- listening sockets: which protocol, address and port -----------------------------------------


def test_a_busy_port_names_protocol_address_and_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((HOST, 0))
        port = udp.getsockname()[1]
        line = serve(tmp_path, "--port", str(port))
    assert f"cannot listen on udp {HOST}:{port}: the port is in use" in line, line
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((HOST, 0))
        tcp.listen()
        tls_port = tcp.getsockname()[1]
        line = serve(tmp_path, "--tls-port", str(tls_port))
    assert f"cannot listen on tls {HOST}:{tls_port}: the port is in use" in line, line


def test_an_address_not_of_this_host_is_named(tmp_path: Path) -> None:
    line = serve(tmp_path, "--listen", "192.0.2.123")
    assert line.endswith("--listen 192.0.2.123 is not an address of this host"), line
    line = serve(tmp_path, "--listen", "192.0.2.123", "--relay-ip", HOST)
    assert re.search(r"listen on udp 192\.0\.2\.123:\d+: 192\.0\.2\.123 is not an address", line)
    line = serve(tmp_path, "--relay-ip", "192.0.2.124")  # found at start, not at the first use
    assert line.endswith("--relay-ip 192.0.2.124 is not an address of this host"), line


# -- settings: the file, the setting, what it most likely meant ----------------------------------


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "iceward.toml"
    config.write_text('realm = "x"\nport = 34x\n')
    line = serve(tmp_path, "--config", str(config))
    assert f"config file {config}: not valid TOML" in line and "line 2" in line, line


def test_a_misspelt_setting_says_which_it_meant(tmp_path: Path) -> None:
    config = tmp_path / "iceward.toml"
    config.write_text('relay_port = "50000-50100"\n')
    line = serve(tmp_path, "--config", str(config))
    assert line.endswith(f"unknown setting relay_port in {config}; did you mean relay_ports?")


def test_validation_messages_have_no_pydantic_prefixes(tmp_path: Path) -> None:
    line = serve(tmp_path, "--relay-ports", "5000-4000", "--user", "nopassword")
    assert "relay-ports: relay port range '5000-4000' must be within" in line, line
    assert "user: user 'nopassword' must be NAME:PASSWORD" in line, line
    assert "Value error" not in line


def test_an_unknown_iceward_variable_is_warned_about(tmp_path: Path) -> None:
    proc = iceward(
        "serve",
        "--http",
        "off",
        "--data-dir",
        str(tmp_path / "data"),
        "--cert",
        str(tmp_path / "none.pem"),  # stops it right after the settings are read
        "--key",
        str(tmp_path / "none.pem"),
        env={"ICEWARD_RELAYPORTS": "50000-50100", "ICEWARD_FASTPATH": "1"},
    )
    assert proc.returncode == 2
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "iceward serve: warning: ICEWARD_RELAYPORTS is not a setting: ignored; "
        "did you mean ICEWARD_RELAY_PORTS?"
    ], proc.stderr


def test_a_list_setting_from_the_environment_is_explained_without_its_value(
    tmp_path: Path,
) -> None:
    line = serve(tmp_path, env={"ICEWARD_SECRET": "top-secret-value"})
    assert line.endswith("""ICEWARD_SECRET: a list setting is a JSON array in the environment, \
e.g. ICEWARD_SECRET='["VALUE"]'"""), line
    assert "top-secret-value" not in line


def test_postgresql_without_its_driver_says_what_to_install(tmp_path: Path) -> None:
    # The test environment has psycopg (the fleet tests use it): hide it as if not installed.
    hidden = tmp_path / "no-psycopg" / "psycopg"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    env = {"PYTHONPATH": str(hidden.parent)}
    line = serve(tmp_path, "--database", "postgresql://iceward@127.0.0.1/iceward", env=env)
    assert "pip install 'iceward[postgresql]'" in line, line


# -- help ----------------------------------------------------------------------------------------

PYTHON_TYPES = re.compile(r"<(?:int|str|bool|float|path|file|list\[[^\]]*\])>")


@pytest.mark.parametrize("command", ["serve", "credentials", "doctor", "analyze", "keys add"])
def test_help_shows_words_not_python_types(command: str) -> None:
    proc = iceward(*command.split(), "--help")
    assert proc.returncode == 0, proc.stderr
    assert not PYTHON_TYPES.search(proc.stdout), proc.stdout
    if command == "serve":
        assert re.search(r"--listen +IP ", proc.stdout), proc.stdout
        assert re.search(r"--relay-ports +LOW-HIGH ", proc.stdout), proc.stdout
        assert re.search(r"--help +Show this message", proc.stdout), proc.stdout  # a flag: no word
    if command == "doctor":
        assert re.search(r"--json +Print", proc.stdout), proc.stdout
        assert "Exit codes: 0 no error finding" in proc.stdout, proc.stdout
