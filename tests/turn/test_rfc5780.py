"""RFC 5780 NAT behaviour discovery in the sans-IO core: OTHER-ADDRESS, RESPONSE-ORIGIN and
CHANGE-REQUEST answered from the other address and/or port (RFC 5780 sections 6 and 7)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.message import encode_message, parse_message
from iceward.turn.allocation import Address, FiveTuple
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.events import ToClient
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import TurnConfig, TurnServer
from tests.conftest import HOST, RunningServer, with_fixed_ports
from tests.turn.helpers import FakeRelays

PRIMARY: Address = ("192.0.2.1", 3478)
ALTERNATE: Address = ("192.0.2.2", 3479)
CLIENT: Address = ("198.51.100.7", 40000)


def core(change: bool = True) -> TurnServer:
    config = TurnConfig(change_addresses=(PRIMARY, ALTERNATE) if change else None)
    return TurnServer(
        config, CredentialStore("lab"), NonceManager(os.urandom(32)), PeerPolicy(), FakeRelays()
    )


def binding(
    server: TurnServer, local: Address, flags: int | None = None, transport: str = "udp"
) -> tuple[ToClient, dict[int, bytes], bytes, int]:
    txid = os.urandom(12)
    attrs = [] if flags is None else [(C.CHANGE_REQUEST, A.encode_u32(flags))]
    data = encode_message(C.BINDING, C.REQUEST, txid, attrs, fingerprint=True)
    [out] = server.handle_client(data, FiveTuple(transport, CLIENT, local), 0.0)
    assert isinstance(out, ToClient)
    msg = parse_message(out.data)
    assert msg.transaction_id == txid
    return out, dict(msg.attributes), txid, msg.cls


@pytest.mark.parametrize(
    ("local", "flags", "source"),
    [
        (PRIMARY, None, PRIMARY),
        (PRIMARY, 0, PRIMARY),
        (PRIMARY, 0x4 | 0x2, ("192.0.2.2", 3479)),
        (PRIMARY, 0x2, ("192.0.2.1", 3479)),
        (PRIMARY, 0x4, ("192.0.2.2", 3478)),
        (("192.0.2.2", 3479), 0x4 | 0x2, PRIMARY),
        (("192.0.2.1", 3479), 0x4, ("192.0.2.2", 3479)),
    ],
)
def test_change_request_answers_from_the_requested_address(
    local: Address, flags: int | None, source: Address
) -> None:
    out, attrs, txid, cls = binding(core(), local, flags)
    assert cls == C.SUCCESS
    # Sent from the changed address (the adapter picks the listener by five_tuple.server) ...
    assert out.five_tuple.server == source
    assert out.five_tuple.client == CLIENT
    # ... which RESPONSE-ORIGIN names; OTHER-ADDRESS is the other IP and the other port.
    assert A.decode_address(attrs[C.RESPONSE_ORIGIN]) == source
    other = ("192.0.2.2" if local[0] == "192.0.2.1" else "192.0.2.1",
             3479 if local[1] == 3478 else 3478)  # fmt: skip
    assert A.decode_address(attrs[C.OTHER_ADDRESS]) == other
    assert A.decode_xor_address(attrs[C.XOR_MAPPED_ADDRESS], txid) == CLIENT


def test_change_request_over_tcp_is_refused() -> None:
    out, attrs, _, cls = binding(core(), PRIMARY, 0x6, transport="tcp")
    assert cls == C.ERROR
    assert A.decode_error_code(attrs[C.ERROR_CODE])[0] == 400
    assert out.five_tuple.server == PRIMARY


def test_plain_binding_over_tcp_still_carries_other_address() -> None:
    _, attrs, _, cls = binding(core(), PRIMARY, transport="tcp")
    assert cls == C.SUCCESS
    assert A.decode_address(attrs[C.OTHER_ADDRESS]) == ALTERNATE


def test_without_alternate_address_change_request_gets_420() -> None:
    out, attrs, _, cls = binding(core(change=False), PRIMARY, 0x6)
    assert cls == C.ERROR
    assert A.decode_error_code(attrs[C.ERROR_CODE])[0] == 420
    assert A.decode_unknown_attributes(attrs[C.UNKNOWN_ATTRIBUTES]) == [C.CHANGE_REQUEST]
    assert out.five_tuple.server == PRIMARY


def test_without_alternate_address_plain_binding_is_unchanged() -> None:
    _, attrs, _, cls = binding(core(change=False), PRIMARY)
    assert cls == C.SUCCESS
    assert C.OTHER_ADDRESS not in attrs and C.RESPONSE_ORIGIN not in attrs


def test_malformed_change_request_is_400() -> None:
    txid = os.urandom(12)
    data = encode_message(C.BINDING, C.REQUEST, txid, [(C.CHANGE_REQUEST, b"\x00\x00")])
    [out] = core().handle_client(data, FiveTuple("udp", CLIENT, PRIMARY), 0.0)
    assert isinstance(out, ToClient)
    msg = parse_message(out.data)
    assert msg.cls == C.ERROR
    assert A.decode_error_code(dict(msg.attributes)[C.ERROR_CODE])[0] == 400


# -- through the real server: --alternate-address opens the four UDP listeners --------------------


def test_serve_alternate_address_end_to_end(
    make_server: Callable[..., RunningServer],
) -> None:
    """``iceward serve --alternate-address 127.0.0.2``: the doctor's RFC 5780 client sees no NAT,
    every CHANGE-REQUEST answered from the right address (RESPONSE-ORIGIN = packet source)."""
    from iceward.doctor.nat import EIM, discover

    server = with_fixed_ports(  # the alternate port is the server's + 1: fixed, not port 0
        lambda port, _: make_server(
            "--alternate-address", "127.0.0.2", tls=False, http=False, port=port
        )
    )
    report = discover((HOST, server.port), timeout=1.0)
    assert report.other == ("127.0.0.2", server.port + 1), report
    assert report.behind_nat is False
    assert (report.mapping, report.filtering) == (EIM, EIM), report.as_dict()
    assert report.notes == [], report.notes
    sources = {t["test"]: t["source"] for t in report.tests}
    assert sources["filtering II"] == f"127.0.0.2:{server.port + 1}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--alternate-address", "127.0.0.2"), "exactly one specific --listen"),
        (("--alternate-address", "not-an-ip"), "IP or IP:PORT"),
    ],
)
def test_serve_alternate_address_is_validated(flags: tuple[str, ...], message: str) -> None:
    from typer.testing import CliRunner

    from iceward.cli import app

    argv = ["serve", "--listen", "0.0.0.0", *flags, "--http", "off"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert message in result.stderr
