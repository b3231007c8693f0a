"""The endpoint on a real UDP transport: responses go out at once, bad ones never escape."""

from __future__ import annotations

import trio

from voicedashd.config import HostPort, SipConfig
from voicedashd.metrics import Metrics
from voicedashd.sip.endpoint import ServerTx, SipClient, SipEndpoint
from voicedashd.sip.message import Request, Response
from voicedashd.sip.parser import make_response, parse_message
from voicedashd.sip.transaction import Action
from voicedashd.sip.transport import Peer, open_transport

OPTIONS = ("OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch}\r\n"
           "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\n"
           "Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

def loopback_sip() -> SipConfig:
    """[sip] listening on 127.0.0.1, nothing else set."""
    return SipConfig(listen=HostPort("127.0.0.1", 5060))


class Core:
    """A core that answers at once; to Call-ID "bad" with a header no message may carry."""

    def handle_request(self, request: Request, peer: Peer, tx: ServerTx) -> None:
        """Answer at once, in the transport's task."""
        extra = ([("Warning", '399 x "split\r\nInjected: yes"')]
                 if request.headers.get("Call-ID") == "bad" else [])
        tx.respond(make_response(request, 200, "OK", to_tag="t", headers=extra))

    def handle_ack(self, ack: Request, peer: Peer) -> None:
        """Not used here."""

    def transaction_action(self, request: Request, action: Action) -> None:
        """Not used here."""


async def test_a_response_that_cannot_be_serialised_is_dropped_and_the_next_one_sent() -> None:
    core = Core()
    transport = await open_transport(HostPort("127.0.0.1", 0))
    port = transport.udp_port
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            endpoint = SipEndpoint(transport, core, nursery, Metrics(),
                                   SipClient(transport, loopback_sip))
            await nursery.start(transport.serve, endpoint.handle)
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            mine = peer.getsockname()[1]
            bad = OPTIONS.format(port=mine, branch="bad").encode()
            # The retransmission is answered outside the core's failure boundary: by the
            # transaction, from the transport's task.
            for _ in range(2):
                await peer.sendto(bad, ("127.0.0.1", port))
            await peer.sendto(OPTIONS.format(port=mine, branch="good").encode(),
                              ("127.0.0.1", port))
            answer = parse_message(await peer.recv(65535))
            assert isinstance(answer, Response)
            assert (answer.status, answer.headers.get("Call-ID")) == (200, "good")
            nursery.cancel_scope.cancel()
