"""RTP/RTCP port pairs from [media] rtp_ports: bound sockets, released on every call end path."""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass

from ..errors import RESOURCE_ERRNOS


class PortsExhausted(Exception):
    """Every RTP port of the range is in use or unavailable."""


class SocketsUnavailable(Exception):
    """No socket can be made now (out of file descriptors or memory); the pool is unchanged."""


@dataclass
class RtpSockets:
    """A bound RTP socket on an even port and its RTCP socket on the next port (non-blocking).

    The media session reads and writes them from its clock tick, synchronously: holding the
    descriptors here means a call needs no more of them once its ports are allocated.
    """

    rtp: socket.socket
    rtcp: socket.socket
    address: str
    port: int

    def close(self) -> None:
        """Close both sockets."""
        self.rtp.close()
        self.rtcp.close()


class RtpPortPool:
    """Hands out even RTP ports round-robin so a just-freed port is reused last."""

    def __init__(self, address: str, low: int, high: int) -> None:
        self.address = address
        first = low + (low % 2)
        self._free: deque[int] = deque(range(first, high, 2))
        self._in_use: set[int] = set()

    @property
    def in_use(self) -> int:
        """How many pairs are allocated."""
        return len(self._in_use)

    @property
    def free(self) -> int:
        """How many pairs can still be handed out."""
        return len(self._free)

    def allocate(self) -> RtpSockets:
        """Bind the next free pair; ports another process holds are skipped.

        Raises SocketsUnavailable (out of descriptors) or PortsExhausted; either way no port
        and no socket is kept.
        """
        for _ in range(len(self._free)):
            port = self._free.popleft()
            try:
                rtp, rtcp = self._bind_pair(port)
            except SocketsUnavailable:
                self._free.appendleft(port)  # nothing wrong with the port: it stays first
                raise
            except OSError:
                self._free.append(port)
                continue
            self._in_use.add(port)
            return RtpSockets(rtp, rtcp, self.address, port)
        raise PortsExhausted(f"no free RTP port pair in media.rtp_ports for {self.address}")

    def _bind_pair(self, port: int) -> tuple[socket.socket, socket.socket]:
        """Two sockets bound on port and port + 1; nothing stays open if that fails."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        opened: list[socket.socket] = []
        try:
            for offset in (0, 1):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                opened.append(sock)
                sock.setblocking(False)
                # A numeric address binds at once: no resolver, nothing to wait for.
                sock.bind((self.address, port + offset))
        except OSError as exc:
            for sock in opened:
                sock.close()
            if exc.errno in RESOURCE_ERRNOS:
                raise SocketsUnavailable(f"cannot open an RTP socket: {exc.strerror}") from exc
            raise
        return opened[0], opened[1]

    def release(self, sockets: RtpSockets) -> None:
        """Close a pair and return its port to the pool."""
        sockets.close()
        if sockets.port in self._in_use:
            self._in_use.remove(sockets.port)
            self._free.append(sockets.port)
