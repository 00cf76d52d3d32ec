"""TLS for ``turns:``: load the operator's certificate, or make a self-signed one once."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

from iceward.certs import self_signed
from iceward.datadir import create_private_file, ensure_private_dir

log = logging.getLogger("iceward.tls")

#: Days the self-signed certificate is valid.
SELF_SIGNED_DAYS = 825


def ensure_self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Return (cert, key) in ``directory``, generating a self-signed pair the first time."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    ensure_private_dir(directory)
    sans = list(dict.fromkeys(["localhost", socket.gethostname(), *names]))
    cert, key = self_signed(names[0] if names else "iceward", sans, SELF_SIGNED_DAYS)
    for path, data in ((key_path, key), (cert_path, cert)):  # in the data dir: both private
        path.unlink(missing_ok=True)  # one of the pair left alone: made again with the other
        create_private_file(path, data)
    log.warning(
        "generated a self-signed TLS certificate in %s: browsers will refuse turns: with it; "
        "pass --cert/--key with a certificate from a CA for production",
        directory,
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
