"""SIP over UDP and TCP: thin Trio I/O that moves bytes between sockets and the UA core."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog
import trio

from ..config import HostPort
from ..errors import ListenerError
from .parser import SipParseError, StreamFramer

log = structlog.get_logger(__name__)

MAX_DATAGRAM = 65535
UDP_BATCH = 64
TCP_IDLE_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from (or goes to): transport, address and port."""

    transport: Literal["UDP", "TCP"]
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Whether the transport retransmits for us (no SIP retransmission timers)."""
        return self.transport == "TCP"


MessageHandler = Callable[[bytes, Peer], None]


@dataclass
class _Connection:
    stream: trio.SocketStream
    lock: trio.Lock = field(default_factory=trio.Lock)


def _ignore(data: bytes, peer: Peer) -> None:
    """Drop messages that arrive before serve() names a handler."""


class Transport:
    """Sends bytes to a peer: our UDP socket, or the peer's TCP connection (opened if needed)."""

    def __init__(self, udp: socket.socket, tcp: list[trio.SocketListener],
                 local: HostPort) -> None:
        self._raw_udp = udp
        self._udp = trio.socket.from_stdlib_socket(udp)
        self._tcp_listeners = tcp
        self.local = local
        self._nursery: trio.Nursery | None = None
        self._handler: MessageHandler = _ignore
        self._connections: dict[Peer, _Connection] = {}

    async def serve(self, handler: MessageHandler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver every received message to handler until cancelled; closes the sockets."""
        self._handler = handler
        with self._udp:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._serve_udp)
                nursery.start_soon(trio.serve_listeners, self._serve_tcp_connection,
                                   self._tcp_listeners)
                log.info("sip_listening", listen=str(self.local), transports=["UDP", "TCP"])
                task_status.started()

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send one serialized message; errors are logged, never raised (SIP retransmits)."""
        try:
            if peer.transport == "UDP":
                await self._send_datagram(data, (peer.host, peer.port))
                return
            conn = self._connections.get(peer)
            if conn is None:
                conn = await self._connect(peer)
            async with conn.lock:
                await conn.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("sip_send_failed", peer=f"{peer.host}:{peer.port}",
                        transport=peer.transport, error=str(exc))

    async def _send_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        """Send on the UDP socket; addresses are numeric, so skip trio's per-call resolver."""
        raw = self._raw_udp
        while True:
            try:
                raw.sendto(data, address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(raw)
            else:
                await trio.lowlevel.checkpoint()
                return

    async def _connect(self, peer: Peer) -> _Connection:
        if self._nursery is None:
            raise trio.ClosedResourceError("the SIP transport is not serving")
        stream = await trio.open_tcp_stream(peer.host, peer.port)
        conn = _Connection(stream)
        self._connections[peer] = conn
        self._nursery.start_soon(self._read_stream, conn, peer)
        return conn

    async def _serve_udp(self) -> None:
        """Receive datagrams until cancelled, draining what is queued once the socket wakes."""
        raw = self._raw_udp
        while True:
            await trio.lowlevel.wait_readable(raw)
            for _ in range(UDP_BATCH):
                try:
                    data, address = raw.recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except ConnectionResetError:
                    continue  # ICMP port unreachable from an earlier send; not our listener's
                if data.strip(b"\r\n"):
                    self._handler(data, Peer("UDP", address[0], address[1]))
            await trio.lowlevel.checkpoint()

    async def _serve_tcp_connection(self, stream: trio.SocketStream) -> None:
        """Read framed messages from one accepted TCP connection until it closes."""
        host, port = stream.socket.getpeername()[:2]
        peer = Peer("TCP", host, port)
        conn = _Connection(stream)
        self._connections[peer] = conn
        await self._read_stream(conn, peer)

    async def _read_stream(self, conn: _Connection, peer: Peer) -> None:
        framer = StreamFramer()
        try:
            async with conn.stream:
                while True:
                    with trio.move_on_after(TCP_IDLE_TIMEOUT) as idle:
                        chunk = await conn.stream.receive_some(MAX_DATAGRAM)
                    if idle.cancelled_caught or not chunk:
                        return
                    for message in framer.feed(chunk):
                        self._handler(message, peer)
        except SipParseError as exc:
            # A stream whose framing is lost cannot be resynchronised: close it.
            log.warning("sip_stream_unframeable", peer=f"{peer.host}:{peer.port}",
                        reason=exc.reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            if self._connections.get(peer) is conn:
                del self._connections[peer]


def _bind_error(listen: HostPort, exc: OSError) -> ListenerError:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return ListenerError(f"sip.listen: cannot listen on {listen}: {reason}")


async def open_transport(listen: HostPort) -> Transport:
    """Bind the SIP UDP socket and TCP listeners on listen; ListenerError names the setting."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.setblocking(False)
    try:
        udp.bind((listen.host, listen.port))
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
    except OSError as exc:
        udp.close()
        raise _bind_error(listen, exc) from None
    return Transport(udp, listeners, listen)
