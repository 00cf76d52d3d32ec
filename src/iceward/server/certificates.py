"""The server's TLS certificate seen from above: where it comes from (``--cert``, ACME or the
self-signed fallback), its expiry in ``/metrics``, and the ACME manager when ``--acme`` asks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from iceward.config import ServerSettings, parse_http
from iceward.snapshot import Snapshot

if TYPE_CHECKING:
    from iceward.autocert.files import AcmeFiles
    from iceward.autocert.manager import CertificateManager
    from iceward.server.http import HttpServer

log = logging.getLogger("iceward.acme")

#: The TLS-ALPN-01 validator connects to this port (RFC 8737); no other can be asked for.
ALPN_PORT = 443


def acme_files(settings: ServerSettings) -> AcmeFiles | None:
    if not settings.acme:
        return None
    # Imported here, as the x509 parsing below: relaying workers import this module for
    # tls_challenges and load no cryptography unless --acme asks.
    from iceward.autocert.files import AcmeFiles

    return AcmeFiles.of(settings.data_dir)


def tls_challenges(settings: ServerSettings) -> Path | None:
    """The directory TLS listeners answer TLS-ALPN-01 validations from, or None."""
    files = acme_files(settings)
    return files.tls_alpn if files and settings.acme_challenge == "tls-alpn-01" else None


class Certificates:
    """The live certificate's figures, and the ACME manager renewing it (if ``--acme``)."""

    def __init__(self, settings: ServerSettings, swap: Callable[[], None]) -> None:
        """``swap()`` makes every TLS listener load the certificate files again."""
        self.settings = settings
        self.path: Path | None = None
        self._http: HttpServer | None = None
        self._seen: tuple[float, dict[str, float]] | None = None
        files = acme_files(settings)
        self.manager: CertificateManager | None = None
        if files is not None:
            # Imported here: the ACME client and its HTTP stack load only when asked for.
            from iceward.autocert.client import OrderSpec
            from iceward.autocert.manager import CertificateManager

            spec = OrderSpec(
                directory=settings.acme_directory,
                email=settings.acme_email,
                domains=list(settings.acme),
                challenge=settings.acme_challenge,
            )
            self.manager = CertificateManager(spec, files, settings.acme_renew_before * 86400, swap)

    async def open(self) -> None:
        """Bind ``--acme-http``, serving HTTP-01 alone, if asked for (before any worker starts:
        a busy port is an OSError naming it)."""
        # Imported here: relaying workers import this module and load no HTTP stack.
        from fastapi import FastAPI

        from iceward.autocert.http01 import router_for
        from iceward.server.http import HttpServer

        router = router_for(self.settings)
        bind = parse_http(self.settings.acme_http) if self.settings.acme_http else None
        if router is None or bind is None:
            return
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(router)
        self._http = HttpServer(bind, f"{self.settings.acme_http} (--acme-http)")
        await self._http.start(app)

    def start(self, cert: Path | None, tls_port: int) -> None:
        """``cert``: the chain the TLS listeners serve (None: no TLS)."""
        self.path = cert
        if self.manager is None:
            return
        if self.settings.acme_challenge == "tls-alpn-01" and tls_port != ALPN_PORT:
            log.warning(
                "TLS-ALPN-01 validation comes to port %d; the TLS port is %d: forward %d to it",
                ALPN_PORT, tls_port, ALPN_PORT,
            )  # fmt: skip
        self.manager.start()

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
        if self._http is not None:
            await self._http.stop()

    def annotate(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with the certificate's expiry per name and the ACME outcomes."""
        snapshot.certificates.update(self._not_after())
        if self.manager is not None:
            for outcome, n in self.manager.outcomes.items():
                snapshot.counters[f"acme.{outcome}"] = n
        return snapshot

    def _not_after(self) -> dict[str, float]:
        """Per DNS name of the live certificate (read again only when the file changed)."""
        if self.path is None:
            return {}
        try:
            mtime = self.path.stat().st_mtime
            if self._seen is None or self._seen[0] != mtime:
                self._seen = mtime, _names_not_after(self.path.read_bytes())
        except (OSError, ValueError, IndexError):
            return {}
        return self._seen[1]


def _names_not_after(chain: bytes) -> dict[str, float]:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(chain)[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in leaf.subject if a.oid == x509.NameOID.COMMON_NAME]
    when = leaf.not_valid_after_utc.timestamp()
    return dict.fromkeys(names, when)
