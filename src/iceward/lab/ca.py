"""The lab CA: a throwaway CA and a certificate for the lab server's address (TLS on 443)."""

from __future__ import annotations

from pathlib import Path

from iceward.certs import CertFiles, make_ca_and_server_cert
from iceward.lab.topology import ALT_SERVER_IP, SERVER_IP, SIGNAL_IP

SERVER_NAME = "turn.lab.iceward.test"
SIGNAL_NAME = "signal.lab.iceward.test"


LabCA = CertFiles


def make_lab_ca(directory: Path) -> LabCA:
    """The lab CA and the certificate of the lab's TURN and signalling servers."""
    names = (SERVER_NAME, SERVER_IP, ALT_SERVER_IP, SIGNAL_NAME, SIGNAL_IP)
    return make_ca_and_server_cert(
        directory, names, ca_name="iceward lab CA", ca_days=365, leaf_days=90
    )
