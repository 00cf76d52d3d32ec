"""TLS for ``turns:``: the server context the listeners load (the certificate files are
checked, or a self-signed pair made, by :mod:`iceward.net.tlsfiles`)."""

from __future__ import annotations

import ssl
from pathlib import Path

from iceward.net.tlsalpn import acme_aware


def server_context(cert: Path, key: Path, challenges: Path | None = None) -> ssl.SSLContext:
    """``challenges``: the directory of pending ACME TLS-ALPN-01 challenges, if any (see
    :mod:`iceward.net.tlsalpn`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if challenges is None else acme_aware(challenges)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
