"""One ACME order, start to finish, by the ``acme`` library: account, order, challenges,
finalisation, the chain installed in the data dir. Blocking (the library uses requests): the
manager runs it in a thread. Every failure is one :class:`AcmeFailure` whose message names the
directory URL or the domain and says what went wrong, in one line.

``acme`` 3+ no longer ships TLS-ALPN-01 (RFC 8737); its challenge type is registered here, and
its certificate (self-signed, the key authorization's digest in a critical acmeIdentifier
extension) is built with :mod:`iceward.certs`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import josepy as jose
import requests
from acme import challenges, errors, messages
from acme.client import ClientNetwork, ClientV2
from acme.crypto_util import make_csr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from josepy.jwk import JWK, JWKRSA

from iceward.autocert.files import AcmeFiles
from iceward.certs import build_certificate, cert_pem, key_pem, new_key
from iceward.datadir import replace_private_file

#: RFC 8737's acmeIdentifier extension.
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: Seconds for one HTTP exchange with the CA, and for the whole validation and issuance.
HTTP_TIMEOUT = 30
ORDER_TIMEOUT = 120


class AcmeFailure(Exception):
    """The certificate was not obtained; the message says why in one line."""


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    typ = "tls-alpn-01"


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737: validation is the SHA-256 digest of the key authorization."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused: Any) -> bytes:
        return hashlib.sha256(self.key_authorization(account_key).encode()).digest()


if TLSALPN01.typ not in challenges.Challenge.TYPES:
    challenges.ChallengeResponse.register(TLSALPN01Response)
    challenges.Challenge.register(TLSALPN01)


def tls_alpn_certificate(domain: str, digest: bytes) -> bytes:
    """RFC 8737 section 3: a self-signed certificate for ``domain`` with the digest in a
    critical acmeIdentifier extension (a DER OCTET STRING); its key after it, in one PEM."""
    now = datetime.datetime.now(datetime.UTC)
    key = new_key()
    cert = build_certificate(
        domain,
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=7),
        names=[domain],
        extensions=[(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), True)],
    )
    return cert_pem(cert) + key_pem(key)


@dataclass(frozen=True, slots=True)
class OrderSpec:
    directory: str
    email: str | None
    domains: list[str]
    challenge: str  # "tls-alpn-01" or "http-01"


def obtain(spec: OrderSpec, files: AcmeFiles) -> None:
    """Order a certificate for ``spec.domains`` and install it (chain and new key) in
    ``files``; :class:`AcmeFailure` otherwise. Challenge files are removed either way."""
    try:
        _obtain(spec, files)
    except AcmeFailure:
        raise
    except requests.exceptions.SSLError as exc:
        raise AcmeFailure(
            f"ACME directory {spec.directory}: TLS certificate not trusted ({_reason(exc)})"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise AcmeFailure(f"ACME directory {spec.directory} unreachable: {_reason(exc)}") from None
    except messages.Error as exc:
        raise AcmeFailure(
            f"ACME server {spec.directory} refused the order for {', '.join(spec.domains)}: "
            f"{exc.detail or exc.typ}"
        ) from None
    except (errors.Error, jose.errors.Error, ValueError) as exc:
        raise AcmeFailure(
            f"ACME exchange with {spec.directory} for {', '.join(spec.domains)} failed: "
            f"{_one_line(exc)}"
        ) from None


def _obtain(spec: OrderSpec, files: AcmeFiles) -> None:
    account_key = _account_key(files)
    net = ClientNetwork(account_key, user_agent="iceward", timeout=HTTP_TIMEOUT)
    try:
        directory = ClientV2.get_directory(spec.directory, net)
    except json.JSONDecodeError:  # requests' own is also a RequestException
        raise AcmeFailure(f"{spec.directory} is not an ACME directory (not JSON)") from None
    except requests.exceptions.RequestException:
        raise
    except (errors.Error, jose.errors.Error, KeyError, ValueError) as exc:
        raise AcmeFailure(f"{spec.directory} is not an ACME directory ({_one_line(exc)})") from None
    client = ClientV2(directory, net)
    registration = messages.NewRegistration.from_data(
        email=spec.email, terms_of_service_agreed=True
    )
    try:
        client.new_account(registration)
    except errors.ConflictError as exc:  # the key has an account already: use it
        net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
    key = new_key()
    order = client.new_order(make_csr(key_pem(key), spec.domains))
    written = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            domain = authz.body.identifier.value
            challb = next((c for c in authz.body.challenges if c.chall.typ == spec.challenge), None)
            if challb is None:
                offered = ", ".join(c.chall.typ for c in authz.body.challenges) or "none"
                raise AcmeFailure(
                    f"ACME server {spec.directory} offers no {spec.challenge} challenge for "
                    f"{domain} (offered: {offered})"
                )
            chall = challb.chall
            # By type name, not class: an older acme library registers its own TLS-ALPN-01.
            if not isinstance(chall, challenges.KeyAuthorizationChallenge):
                raise AcmeFailure(f"{spec.challenge} challenge for {domain}: not understood")
            key_authorization = chall.key_authorization(account_key)
            if chall.typ == TLSALPN01.typ:
                digest = hashlib.sha256(key_authorization.encode()).digest()
                written.append(files.put_tls_alpn(domain, tls_alpn_certificate(domain, digest)))
            else:
                written.append(files.put_http(chall.encode("token"), key_authorization))
            client.answer_challenge(challb, chall.response(account_key))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        try:
            order = client.poll_and_finalize(order, deadline)
        except errors.ValidationError as exc:
            raise AcmeFailure(_validation_failure(spec, exc)) from None
        except errors.TimeoutError:
            raise AcmeFailure(
                f"ACME server {spec.directory}: no certificate for {', '.join(spec.domains)} "
                f"within {ORDER_TIMEOUT} s"
            ) from None
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    if not order.fullchain_pem:
        raise AcmeFailure(f"ACME server {spec.directory} returned no certificate chain")
    files.install(order.fullchain_pem.encode(), key_pem(key), spec.directory)


def _account_key(files: AcmeFiles) -> JWKRSA:
    """The account key kept in the data dir, made the first time (RSA 2048, as RS256 wants)."""
    path = files.account_key
    if path.exists():
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise AcmeFailure(f"ACME account key {path} is not an RSA key")
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        replace_private_file(path, pem)
    return JWKRSA(key=private)


def _validation_failure(spec: OrderSpec, exc: errors.ValidationError) -> str:
    parts = []
    for authz in exc.failed_authzrs:
        domain = authz.body.identifier.value
        problems = [
            str(c.error.detail or c.error.typ) for c in authz.body.challenges if c.error is not None
        ]
        parts.append(f"{domain}: {'; '.join(problems) or 'invalid'}")
    return f"{spec.challenge} challenge failed at {spec.directory}: {' | '.join(parts)}"


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _reason(exc: BaseException) -> str:
    """The useful end of a requests error (connection refused, timed out, name unknown...)."""
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip()
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {HTTP_TIMEOUT} s"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
