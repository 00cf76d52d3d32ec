"""Whether ``turns:`` can be on 443, asked of the kernel's real rules, and what serve says.

The check runs as an unprivileged user (nobody), with and without CAP_NET_BIND_SERVICE, and its
answer is compared with what the kernel does when that user binds 443 for real.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from iceward.cli import tls_port_note
from iceward.net.listeners import may_bind_port
from tests.conftest import require_tool

# The kernel checks the permission before whether the port is taken: in use means allowed.
PROBE = (
    "import errno, socket\n"
    "from iceward.net.listeners import may_bind_port\n"
    "s = socket.socket()\n"
    "try:\n"
    "    s.bind(('127.0.0.9', 443)); bound = True\n"
    "except OSError as exc:\n"
    "    bound = exc.errno == errno.EADDRINUSE\n"
    "print(may_bind_port(443), bound)\n"
)
CAPS = ("--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service")


@pytest.mark.parametrize("caps", [(), CAPS], ids=["unprivileged", "cap_net_bind_service"])
def test_may_bind_443_agrees_with_the_kernel(caps: tuple[str, ...]) -> None:
    setpriv = require_tool("setpriv")
    nobody = ("--reuid=65534", "--regid=65534", "--clear-groups")
    out = subprocess.run(
        [setpriv, *nobody, *caps, sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == (["True", "True"] if caps else ["False", "False"])


def test_the_note_says_why_turns_is_not_on_443() -> None:
    assert os.geteuid() != 0 or may_bind_port(443)
    refused = tls_port_note(5349, True, False)
    assert "turns: on port 5349 (TURN over TLS, TURN over TCP and HTTPS), not 443" in refused
    assert "needs root or CAP_NET_BIND_SERVICE" in refused and "setcap" in refused
    assert "add --tls-port 443" in tls_port_note(5349, False, True)
    assert "HTTPS" not in tls_port_note(5349, False, True)
    assert tls_port_note(443, True, True).startswith("# turns: on 443 (")
    assert "TLS is off" in tls_port_note(0, True, True)
