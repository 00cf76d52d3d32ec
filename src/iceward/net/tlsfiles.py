"""The certificate files ``turns:`` needs, before any listener loads them: the operator's
``--cert``/``--key`` checked with errors naming the file, or a self-signed pair made once.

Apart from :mod:`iceward.net.tls` because it needs the ``cryptography`` library, which relaying
workers (loading only the server context) never import.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iceward.certs import self_signed
from iceward.datadir import create_private_file, ensure_private_dir
from iceward.net.tls import server_context

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


class TlsFilesError(OSError):
    """A ``--cert``/``--key`` pair that cannot serve TLS; the message names the file."""


def check_tls_files(cert: Path, key: Path) -> None:
    """Load the pair once, as the listeners will; :class:`TlsFilesError` says which file is
    wrong and how (missing, unreadable, not PEM, a key where a certificate belongs, encrypted,
    not belonging together)."""
    contents = {}
    for role, path in (("certificate", cert), ("key", key)):
        try:
            contents[role] = path.read_bytes()
        except OSError as exc:
            raise TlsFilesError(f"TLS {role} {path}: {_os_problem(exc)}") from None
    problem = _certificate_problem(contents["certificate"], cert)
    if problem:
        raise TlsFilesError(f"TLS certificate {cert}: {problem}")
    problem = _key_problem(contents["key"], key)
    if problem:
        raise TlsFilesError(f"TLS key {key}: {problem}")
    leaf = x509.load_pem_x509_certificates(contents["certificate"])[0]
    private = serialization.load_pem_private_key(contents["key"], password=None)
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise TlsFilesError(f"TLS key {key} does not belong to the certificate {cert}")
    try:
        server_context(cert, key)
    except ssl.SSLError as exc:
        raise TlsFilesError(f"TLS certificate {cert} with key {key}: {exc.reason or exc}") from None
    except OSError as exc:  # replaced meanwhile
        raise TlsFilesError(f"TLS certificate {cert} or key {key}: {_os_problem(exc)}") from None


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "not readable by this user (permission denied)"
    if isinstance(exc, IsADirectoryError):
        return "a directory, not a file"
    return str(exc.strerror or exc)


def _certificate_problem(data: bytes, path: Path) -> str | None:
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            x509.load_pem_x509_certificates(data)
        except ValueError:
            return "a certificate block that does not decode (damaged or cut short)"
        return None
    if b"PRIVATE KEY-----" in data:
        return "a private key, not a certificate (--cert and --key swapped?)"
    if data[:1] == b"\x30":
        return f"not PEM (DER?): convert it: openssl x509 -inform DER -in {path} -out cert.pem"
    return "no certificate in it (no '-----BEGIN CERTIFICATE-----' line)"


def _key_problem(data: bytes, path: Path) -> str | None:
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        return f"encrypted; give it without a passphrase: openssl pkey -in {path} -out key.pem"
    if b"PRIVATE KEY-----" in data:
        try:
            serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            return "a private key block that does not decode (damaged, or a type not supported)"
        return None
    if b"-----BEGIN CERTIFICATE-----" in data:
        return "a certificate, not a private key (--cert and --key swapped?)"
    if data[:1] == b"\x30":
        return f"not PEM (DER?): convert it: openssl pkey -inform DER -in {path} -out key.pem"
    return "no private key in it (no '-----BEGIN ... PRIVATE KEY-----' line)"
