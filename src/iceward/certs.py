"""X.509 certificates, built in one place: the server's self-signed fallback, and a throwaway CA
with a server certificate it signs (for labs and tests).

Browsers validate ``turns:`` certificates, so a lab or a test that wants TLS to be checked for
real trusts this CA (in an NSS database, an ``ssl`` context) instead of ignoring errors.

A bottom layer: cryptography and the standard library only. Writing a secret into the data dir
(with its modes) is the caller's business; :func:`make_ca_and_server_cert` writes its own files.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Every key made here: ECDSA on P-256.
PrivateKey = ec.EllipticCurvePrivateKey

#: An extension and whether it is critical.
Extension = tuple[x509.ExtensionType, bool]


@dataclass(frozen=True)
class CertFiles:
    """PEM files: the CA certificate to trust, and the server certificate and key to serve."""

    ca_cert: Path
    cert: Path
    key: Path


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """An IP address SAN for each name that parses as one, a DNS name SAN for the others."""
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def build_certificate(
    common_name: str,
    key: PrivateKey,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    names: Sequence[str] = (),
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    extensions: Sequence[Extension] = (),
) -> x509.Certificate:
    """The one certificate builder: ``key``'s public half named ``common_name``, with ``names``
    as subject alternative names (no SAN extension when empty), then ``extensions``; signed
    (SHA-256) by ``issuer`` (its certificate and key), or by ``key`` itself when None."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(subject_alt_names(names)), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted: the server reads it without a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed(common_name: str, names: Sequence[str], days: int) -> tuple[bytes, bytes]:
    """A new key and a certificate it signs itself for ``names``: (certificate PEM, key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    key = new_key()
    cert = build_certificate(
        common_name,
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=days),
        names=names,
    )
    return cert_pem(cert), key_pem(key)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def make_ca_and_server_cert(
    directory: Path,
    names: tuple[str, ...],
    *,
    ca_name: str = "iceward test CA",
    ca_days: int = 30,
    leaf_days: int = 7,
) -> CertFiles:
    """A new CA and a certificate it signs for ``names`` (DNS names or IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    ca_key = new_key()
    ca = build_certificate(
        ca_name,
        ca_key,
        not_before=not_before,
        not_after=now + datetime.timedelta(days=ca_days),
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (_CA_KEY_USAGE, True),
        ],
    )
    key = new_key()
    leaf = build_certificate(
        names[0],
        key,
        not_before=not_before,
        not_after=now + datetime.timedelta(days=leaf_days),
        names=names,
        issuer=(ca, ca_key),
        extensions=[
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    out = CertFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    out.ca_cert.write_bytes(cert_pem(ca))
    out.cert.write_bytes(cert_pem(leaf))
    out.key.write_bytes(key_pem(key))
    out.key.chmod(0o600)
    return out
