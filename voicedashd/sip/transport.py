"""SIP over UDP and TCP: thin Trio I/O that moves bytes between sockets and the UA core."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog
import trio

from ..config import HostPort, SipConfig
from ..errors import RESOURCE_ERRNOS, ListenerError
from ..listen import numeric_host
from ..metrics import Metrics
from .parser import SipParseError, StreamFramer

log = structlog.get_logger(__name__)

MAX_DATAGRAM = 65535
UDP_BATCH = 64
TCP_OUTBOX = 256  # messages queued for one connection; a peer that far behind loses some
# An accept that fails for lack of descriptors waits this long, doubling up to the maximum,
# before trying again: a full process must not spin on a listener that stays readable.
ACCEPT_BACKOFF = 0.05
ACCEPT_BACKOFF_MAX = 1.0


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """Caps on accepted SIP/TCP connections, read for each new connection or read."""

    max_connections: int
    max_per_source: int
    idle_timeout: float
    trusted: Callable[[str], bool]

    @classmethod
    def of(cls, sip: SipConfig) -> TcpLimits:
        """The limits [sip] sets."""
        return cls(sip.max_tcp_connections, sip.max_tcp_connections_per_source,
                   sip.tcp_idle_timeout, sip.is_trusted)


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
    """A TCP connection and its outbox: one writer task keeps messages whole and in order."""

    stream: trio.SocketStream
    outbox: trio.MemorySendChannel[bytes]
    queued: trio.MemoryReceiveChannel[bytes]

    @classmethod
    def of(cls, stream: trio.SocketStream) -> _Connection:
        """Wrap a stream with an empty outbox."""
        outbox, queued = trio.open_memory_channel[bytes](TCP_OUTBOX)
        return cls(stream, outbox, queued)

    async def write(self) -> None:
        """Send what is queued until the outbox closes or the stream breaks."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            async for data in self.queued:
                await self.stream.send_all(data)


def _ignore(data: bytes, peer: Peer) -> None:
    """Drop messages that arrive before serve() names a handler."""


class Transport:
    """Sends bytes to a peer: our UDP socket, or the peer's TCP connection (opened if needed)."""

    def __init__(self, udp: socket.socket, tcp: list[trio.SocketListener], local: HostPort,
                 metrics: Metrics, limits: Callable[[], TcpLimits]) -> None:
        self._raw_udp = udp
        self._udp = trio.socket.from_stdlib_socket(udp)
        self._tcp_listeners = tcp
        self.local = local
        self._metrics = metrics
        self._limits = limits
        self._nursery: trio.Nursery | None = None
        self._handler: MessageHandler = _ignore
        self._connections: dict[Peer, _Connection] = {}
        self._accepted: Counter[str] = Counter()  # open accepted connections per source host

    @property
    def udp_port(self) -> int:
        """The port the UDP socket is bound to (what a listen port of 0 became)."""
        return int(self._raw_udp.getsockname()[1])

    async def serve(self, handler: MessageHandler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver every received message to handler until cancelled; closes the sockets."""
        self._handler = handler
        with self._udp:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._serve_udp)
                for listener in self._tcp_listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                log.info("sip_listening", listen=str(self.local), transports=["UDP", "TCP"])
                task_status.started()

    def send_nowait(self, data: bytes, peer: Peer) -> None:
        """Send one serialized message without waiting; errors are logged (SIP retransmits).

        A datagram goes out at once, a TCP message joins its connection's outbox. A full
        socket buffer or a connection still to open is left to a task.
        """
        if peer.transport == "UDP":
            try:
                self._raw_udp.sendto(data, (peer.host, peer.port))
            except BlockingIOError:
                self._send_later(data, peer)
            except OSError as exc:
                self._send_failed(peer, exc)
            return
        conn = self._connections.get(peer)
        if conn is None:
            self._send_later(data, peer)
        else:
            self._queue(conn, data, peer)

    def _send_later(self, data: bytes, peer: Peer) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.send, data, peer)

    def _queue(self, conn: _Connection, data: bytes, peer: Peer) -> None:
        try:
            conn.outbox.send_nowait(data)
        except trio.WouldBlock:
            self._send_failed(peer, OSError(f"peer is not reading: {TCP_OUTBOX} messages queued"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._send_failed(peer, exc)

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send one serialized message; errors are logged, never raised (SIP retransmits)."""
        try:
            if peer.transport == "UDP":
                await self._send_datagram(data, (peer.host, peer.port))
                return
            conn = self._connections.get(peer)
            if conn is None:
                conn = await self._connect(peer)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._send_failed(peer, exc)
            return
        self._queue(conn, data, peer)

    def _send_failed(self, peer: Peer, exc: Exception) -> None:
        log.warning("sip_send_failed", peer=f"{peer.host}:{peer.port}",
                    transport=peer.transport, error=str(exc) or type(exc).__name__)

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
        conn = _Connection.of(stream)
        self._connections[peer] = conn
        self._nursery.start_soon(self._run_connection, conn, peer)
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

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections until cancelled; out of descriptors, back off and retry."""
        backoff = ACCEPT_BACKOFF
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in RESOURCE_ERRNOS:
                        raise
                    name = errno.errorcode.get(exc.errno or 0, "?")
                    self._metrics.sip_accept_errors.labels(name).inc()
                    if backoff == ACCEPT_BACKOFF:  # once per episode, not once per retry
                        log.warning("sip_accept_failed", error=name, retry_in=backoff)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                    continue
                backoff = ACCEPT_BACKOFF
                self._admit_connection(stream, nursery)

    def _admit_connection(self, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        """Serve an accepted connection, or close it at once if its source is over a cap."""
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:  # reset before we looked
            stream.socket.close()
            return
        limits = self._limits()
        if not limits.trusted(host):
            cap = None
            if sum(self._accepted.values()) >= limits.max_connections:
                cap = "total"
            elif self._accepted[host] >= limits.max_per_source:
                cap = "per_source"
            if cap is not None:
                stream.socket.close()
                self._metrics.sip_tcp_refused.labels(cap).inc()
                return
        self._accepted[host] += 1
        self._metrics.sip_tcp_connections.inc()
        nursery.start_soon(self._serve_tcp_connection, stream, Peer("TCP", host, port))

    async def _serve_tcp_connection(self, stream: trio.SocketStream, peer: Peer) -> None:
        """Serve one accepted TCP connection until it closes."""
        try:
            conn = _Connection.of(stream)
            self._connections[peer] = conn
            await self._run_connection(conn, peer)
        finally:
            self._metrics.sip_tcp_connections.dec()
            self._accepted[peer.host] -= 1
            if self._accepted[peer.host] <= 0:
                del self._accepted[peer.host]

    async def _run_connection(self, conn: _Connection, peer: Peer) -> None:
        """Write the connection's outbox while reading framed messages from it."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write)
                await self._read_stream(conn, peer)
                nursery.cancel_scope.cancel()
        finally:
            conn.outbox.close()
            if self._connections.get(peer) is conn:
                del self._connections[peer]

    async def _read_stream(self, conn: _Connection, peer: Peer) -> None:
        framer = StreamFramer()
        try:
            async with conn.stream:
                while True:
                    with trio.move_on_after(self._limits().idle_timeout) as idle:
                        chunk = await conn.stream.receive_some(MAX_DATAGRAM)
                    if idle.cancelled_caught:
                        self._metrics.sip_tcp_idle_closed.inc()
                        return
                    if not chunk:
                        return
                    for message in framer.feed(chunk):
                        self._handler(message, peer)
        except SipParseError as exc:
            # A stream whose framing is lost cannot be resynchronised: close it.
            log.warning("sip_stream_unframeable", peer=f"{peer.host}:{peer.port}",
                        reason=exc.reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _bind_error(listen: HostPort, exc: OSError) -> ListenerError:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return ListenerError(f"sip.listen: cannot listen on {listen}: {reason}")


async def open_transport(listen: HostPort, metrics: Metrics | None = None,
                         limits: Callable[[], TcpLimits] | None = None) -> Transport:
    """Bind the SIP UDP socket and TCP listeners on listen; ListenerError names the setting.

    The transport's `local` is the bound address (a host name in listen resolved). Without
    metrics the transport counts into a registry of its own, without limits it keeps [sip]'s
    defaults (tests).
    """
    if limits is None:
        defaults = TcpLimits.of(SipConfig.model_construct(listen=listen))
        limits = lambda: defaults  # noqa: E731
    bound = HostPort(await numeric_host(listen, "sip.listen"), listen.port)
    family = socket.AF_INET6 if ":" in bound.host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.setblocking(False)
    try:
        udp.bind((bound.host, bound.port))
        listeners = await trio.open_tcp_listeners(bound.port, host=bound.host)
    except OSError as exc:
        udp.close()
        raise _bind_error(listen, exc) from None
    return Transport(udp, listeners, bound, metrics or Metrics(), limits)
