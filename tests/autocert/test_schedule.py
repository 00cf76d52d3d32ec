"""When the ACME manager orders: the renewal time, the backoff, and what makes a certificate
due at once (no network: files in a temporary data dir)."""

from __future__ import annotations

from pathlib import Path

from iceward.autocert.client import OrderSpec
from iceward.autocert.files import AcmeFiles, LiveCertificate, read_live
from iceward.autocert.manager import RETRY_MAX, CertificateManager, retry_delay

from ..conftest import make_test_ca

DOMAIN = "turn.iceward.test"
DAY = 86400.0
STAGING = "https://acme-staging.example/directory"
PRODUCTION = "https://acme.example/directory"


def test_renewal_time_and_backoff() -> None:
    ninety = LiveCertificate(frozenset({DOMAIN}), 0.0, 90 * DAY, self_signed=False)
    assert ninety.renew_at(30 * DAY) == 60 * DAY
    six = LiveCertificate(frozenset({DOMAIN}), 0.0, 6 * DAY, self_signed=False)
    assert six.renew_at(30 * DAY) == 3 * DAY  # never in the first half of its life
    assert [retry_delay(n) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert retry_delay(50) == RETRY_MAX


def test_due_at_once_for_placeholder_new_domains_or_another_ca(tmp_path: Path) -> None:
    files = AcmeFiles.of(tmp_path / "data")
    files.prepare([DOMAIN])

    def manager(directory: str, *domains: str) -> CertificateManager:
        spec = OrderSpec(directory, None, list(domains or (DOMAIN,)), "tls-alpn-01")
        return CertificateManager(spec, files, 1 * DAY, lambda: None)

    assert manager(PRODUCTION).due_in(read_live(files.cert)) == 0  # the placeholder
    issued = make_test_ca(tmp_path / "ca", (DOMAIN,))  # valid 7 days: due in about 6
    files.install(issued.cert.read_bytes(), issued.key.read_bytes(), STAGING)
    live = read_live(files.cert)
    assert live is not None and not live.self_signed
    assert 5 * DAY < manager(STAGING).due_in(live) < 7 * DAY
    assert manager(PRODUCTION).due_in(live) == 0  # moved from staging to production
    assert manager(STAGING, DOMAIN, "relay.iceward.test").due_in(live) == 0
