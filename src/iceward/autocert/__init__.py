"""Certificates that renew themselves: ``iceward serve --acme DOMAIN``.

- :mod:`iceward.autocert.files`: where the account, the certificate and pending challenges live
  in the data dir (all 0600);
- :mod:`iceward.autocert.client`: the ACME exchange, done by the ``acme`` library (certbot's);
  only the glue is here, and the TLS-ALPN-01 challenge that library no longer ships;
- :mod:`iceward.autocert.manager`: when to renew, retries with backoff, the hot swap, the counts
  ``/metrics`` shows.
"""
