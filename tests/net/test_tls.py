"""The certificates iceward makes: the self-signed fallback for ``turns:`` and the test CA."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtensionOID, NameOID

from iceward.certs import make_ca_and_server_cert
from iceward.net.tls import server_context
from iceward.net.tlsfiles import ensure_self_signed


def sans(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


def test_self_signed_names_key_validity_and_modes(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "tls"
    cert_path, key_path = ensure_self_signed(directory, ["203.0.113.5", "turn.example.test"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "203.0.113.5" and cert.issuer == cert.subject
    assert sans(cert) == ["localhost", socket.gethostname(), "203.0.113.5", "turn.example.test"]
    ip_sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ip_sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.5")]
    assert [e.oid for e in cert.extensions] == [ExtensionOID.SUBJECT_ALTERNATIVE_NAME]
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span == datetime.timedelta(days=825, minutes=5)
    key = load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in (cert_path, key_path)} == {0o600}
    server_context(cert_path, key_path)  # the pair matches
    assert ensure_self_signed(directory, ["other.test"]) == (cert_path, key_path)
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()) == cert  # made once


def test_self_signed_without_names_and_with_half_a_pair(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"left over")
    cert_path, key_path = ensure_self_signed(tmp_path, [])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=iceward"
    assert sans(cert) == list(dict.fromkeys(["localhost", socket.gethostname()]))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    server_context(cert_path, key_path)


def test_ca_and_server_certificate_verify(tmp_path: Path) -> None:
    files = make_ca_and_server_cert(tmp_path / "ca", ("localhost", "127.0.0.1"))
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sans(leaf) == ["localhost", "127.0.0.1"]
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    server_context(files.cert, files.key)
