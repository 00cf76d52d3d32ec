"""TLS for ``turns:``: the verifying context, and what the presented certificate says."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509

from iceward.doctor.evidence import TlsInfo

#: A certificate that expires sooner than this is reported (a warning) before it breaks calls.
EXPIRY_WARNING_DAYS = 14


def client_context(ca_file: Path | None, insecure: bool) -> ssl.SSLContext:
    """The context a browser would use: system CAs (or ``ca_file``), host name checked."""
    if insecure:
        return insecure_context()
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def ca_file_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a ``--ca-file`` (one phrase), or None when it loads."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if b"-----BEGIN" not in data:
        try:
            x509.load_der_x509_certificate(data)
        except ValueError:
            return "not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"
        return (
            "a DER (binary) certificate; give it as PEM: "
            f"openssl x509 -inform DER -in {path} -out {path.with_suffix('.pem')}"
        )
    if b"-----BEGIN CERTIFICATE-----" not in data and b"-----BEGIN TRUSTED CERTIFICATE" not in data:
        if b"PRIVATE KEY-----" in data:
            return "a private key, not a certificate (give the CA's certificate, e.g. ca.pem)"
        return "no certificate in it (no '-----BEGIN CERTIFICATE-----' block)"
    try:
        x509.load_pem_x509_certificates(data)
        ssl.create_default_context(cafile=str(path))
    except (ValueError, ssl.SSLError):
        return "a '-----BEGIN CERTIFICATE-----' block that does not decode (damaged or cut short)"
    return None


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def describe(
    der: bytes | None,
    *,
    verified: bool,
    error: str | None,
    checked: bool,
    version: str = "",
    now: datetime.datetime | None = None,
) -> TlsInfo:
    """Subject, issuer, names and expiry of a DER certificate, with the verification result."""
    info = TlsInfo(verified=verified, error=error, checked=checked, version=version)
    if not der:
        return info
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return info
    info.subject = cert.subject.rfc4514_string()
    info.issuer = cert.issuer.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        info.names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        info.names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    not_after = cert.not_valid_after_utc
    info.not_after = not_after.strftime("%Y-%m-%d %H:%M UTC")
    now = now or datetime.datetime.now(datetime.UTC)
    info.days_left = round((not_after - now).total_seconds() / 86400, 1)
    return info


def verify_message(exc: ssl.SSLCertVerificationError) -> str:
    """The verifier's reason in words ("self-signed certificate", "Hostname mismatch, ...")."""
    text = str(exc.verify_message or exc.reason or exc)
    if "unable to get local issuer" in text:
        text += " (a CA this machine does not trust, or the server omits its intermediates)"
    return text
