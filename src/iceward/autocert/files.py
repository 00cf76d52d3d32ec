"""The ACME side of the data dir: ``acme/`` holds the account key, the live certificate chain and
its key, and the challenges pending validation; every file 0600, written atomically."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from iceward.certs import self_signed
from iceward.datadir import ensure_private_dir, replace_private_file
from iceward.net.tlsalpn import challenge_file

#: An HTTP-01 token: base64url (RFC 8555 section 8.3).
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
#: Days the placeholder certificate served until the first one is issued is valid.
PLACEHOLDER_DAYS = 7


@dataclass(frozen=True, slots=True)
class AcmeFiles:
    root: Path

    @classmethod
    def of(cls, data_dir: Path) -> AcmeFiles:
        return cls(data_dir / "acme")

    @property
    def account_key(self) -> Path:
        return self.root / "account-key.pem"

    @property
    def cert(self) -> Path:
        """The full chain the TLS listeners serve."""
        return self.root / "cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "key.pem"

    @property
    def issuer(self) -> Path:
        """The directory URL the live certificate came from (a change of CA orders anew)."""
        return self.root / "directory-url"

    @property
    def tls_alpn(self) -> Path:
        """Pending TLS-ALPN-01 challenges (read by every TLS listener)."""
        return self.root / "tls-alpn-01"

    @property
    def http(self) -> Path:
        """Pending HTTP-01 key authorizations, one file per token."""
        return self.root / "http-01"

    def prepare(self, domains: list[str]) -> tuple[Path, Path]:
        """The directories made (0700) and, before the first certificate is issued, a
        self-signed placeholder for ``domains`` so the TLS port can open; (cert, key)."""
        for directory in (self.root, self.tls_alpn, self.http):
            ensure_private_dir(directory)
        if not (self.cert.exists() and self.key.exists()):
            cert, key = self_signed(domains[0], domains, PLACEHOLDER_DAYS)
            replace_private_file(self.key, key)
            replace_private_file(self.cert, cert)
        return self.cert, self.key

    def install(self, chain: bytes, key: bytes, directory: str) -> None:
        """The new pair in place: the key first, so a pair read between the two writes is
        refused by the reload (keys that do not match) rather than half-swapped."""
        replace_private_file(self.key, key)
        replace_private_file(self.cert, chain)
        replace_private_file(self.issuer, directory.encode())

    def issued_by(self) -> str | None:
        """The directory URL of the CA that issued the live certificate, None: not known."""
        try:
            return self.issuer.read_text().strip()
        except OSError:
            return None

    def put_tls_alpn(self, domain: str, cert_and_key: bytes) -> Path:
        path = challenge_file(self.tls_alpn, domain)
        replace_private_file(path, cert_and_key)
        return path

    def put_http(self, token: str, key_authorization: str) -> Path:
        if not _TOKEN.match(token):
            raise ValueError(f"HTTP-01 token {token!r} is not base64url")
        path = self.http / token
        replace_private_file(path, key_authorization.encode())
        return path

    def http_answer(self, token: str) -> bytes | None:
        """The key authorization to serve for ``token``, None if none is pending."""
        if not _TOKEN.match(token):
            return None
        try:
            return (self.http / token).read_bytes()
        except OSError:
            return None


@dataclass(frozen=True, slots=True)
class LiveCertificate:
    """What the renewal schedule needs to know of the certificate being served."""

    names: frozenset[str]
    not_before: float
    not_after: float
    self_signed: bool

    def renew_at(self, renew_before: float) -> float:
        """Unix time to renew: ``renew_before`` seconds before expiry, but never in the first
        half of the certificate's life (a short-lived certificate is not renewed on issue)."""
        half = self.not_before + (self.not_after - self.not_before) / 2
        return max(self.not_after - renew_before, half)


def read_live(path: Path) -> LiveCertificate | None:
    """The leaf of the chain at ``path``, or None when there is none that parses."""
    try:
        leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return LiveCertificate(
        names=names,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        self_signed=leaf.issuer == leaf.subject,
    )


def utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
