"""The top Via is stamped with what we saw, and responses go to the observed source only."""

from __future__ import annotations

import socket

import pytest

from voicedashd.sip.fields import top_via
from voicedashd.sip.message import Headers
from voicedashd.sip.transport import Peer
from voicedashd.sip.via import response_destination, stamp_via

SOURCE = Peer("UDP", "127.0.0.1", 40000)

CASES = [
    # Via as sent -> received, rport after stamping; destination port
    ("SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1", None, None, 40000),
    ("SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1;received=127.0.0.3",
     "127.0.0.1", None, 40000),
    ("SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1;received=hang.invalid",
     "127.0.0.1", None, 40000),
    ("SIP/2.0/UDP hang.invalid:40000;branch=z9hG4bK1", "127.0.0.1", None, 40000),
    ("SIP/2.0/UDP hang.invalid;branch=z9hG4bK1", "127.0.0.1", None, 5060),
    ("SIP/2.0/UDP 127.0.0.3:40000;branch=z9hG4bK1", "127.0.0.1", None, 40000),
    ("SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport=5999", "127.0.0.1", "40000", 40000),
    ("SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport", "127.0.0.1", "40000", 40000),
    ("SIP/2.0/UDP 127.0.0.3:5999;branch=z9hG4bK1;received=127.0.0.3;rport=5999;maddr=127.0.0.3",
     "127.0.0.1", "40000", 40000),
    ("SIP/2.0/UDP hang.invalid:5999;rport;branch=z9hG4bK1", "127.0.0.1", "40000", 40000),
]


@pytest.fixture
def no_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every host name look-up made through the socket module."""
    asked: list[str] = []

    def refuse(host: object, *args: object, **kwargs: object) -> object:
        asked.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "looked up")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, name, refuse)
    return asked


@pytest.mark.parametrize(("sent", "received", "rport", "port"), CASES)
def test_received_and_rport_are_what_we_saw_and_the_answer_goes_to_the_source(
        sent: str, received: str | None, rport: str | None, port: int,
        no_lookups: list[str]) -> None:
    headers = Headers([("Via", f"{sent}, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK0")])
    via = stamp_via(headers, SOURCE)
    stamped = top_via(headers)
    assert (stamped.received, stamped.params.get("rport")) == (received, rport)
    assert via.params == stamped.params
    assert headers.get("Via", "").endswith(", SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK0")
    assert response_destination(via, SOURCE) == Peer("UDP", "127.0.0.1", port)
    assert no_lookups == []


def test_ipv6_source_written_differently_is_the_same_address() -> None:
    source = Peer("UDP", "::1", 40000)
    headers = Headers([("Via", "SIP/2.0/UDP [0:0::1]:40000;branch=z9hG4bK1")])
    via = stamp_via(headers, source)
    assert via.received is None
    assert response_destination(via, source) == source


def test_over_tcp_responses_go_back_on_the_connection() -> None:
    peer = Peer("TCP", "127.0.0.1", 41000)
    headers = Headers([("Via", "SIP/2.0/TCP 127.0.0.3:5060;branch=z9hG4bK1;rport=9")])
    via = stamp_via(headers, peer)
    assert (via.received, via.params["rport"]) == ("127.0.0.1", "41000")
    assert response_destination(via, peer) == peer
