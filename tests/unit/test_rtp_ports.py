"""The RTP port pool on real sockets: ports skipped when taken, never lost when out of fds."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.harness import free_even_port_range
from voicedashd.media.ports import PortsExhausted, RtpPortPool, SocketsUnavailable


@contextmanager
def descriptors_left(count: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE so only `count` more descriptors can open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The kernel hands out the lowest free number and refuses one at or above the limit.
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + count, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_allocate_and_release_round_robin() -> None:
    low, high = free_even_port_range(8)
    pool = RtpPortPool("127.0.0.1", low, high)
    assert pool.free == 4
    first = pool.allocate()
    assert (first.port, pool.free, pool.in_use) == (low, 3, 1)
    pool.release(first)
    assert (pool.free, pool.in_use) == (4, 0)
    assert pool.allocate().port == low + 2  # a just-freed port is reused last


async def test_a_port_held_elsewhere_is_skipped_and_kept() -> None:
    low, high = free_even_port_range(4)
    pool = RtpPortPool("127.0.0.1", low, high)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", low + 1))  # the RTCP port of the first pair
        got = pool.allocate()
        assert got.port == low + 2
        with pytest.raises(PortsExhausted):
            pool.allocate()
    pool.release(got)
    assert pool.free == 2


@pytest.mark.parametrize("left", [0, 1])
async def test_out_of_descriptors_loses_no_port_and_no_socket(left: int) -> None:
    low, high = free_even_port_range(8)
    pool = RtpPortPool("127.0.0.1", low, high)
    before = open_fds()
    with descriptors_left(left), pytest.raises(SocketsUnavailable):
        pool.allocate()  # with one left, the RTP socket opens and the RTCP one cannot
    assert open_fds() == before
    assert (pool.free, pool.in_use) == (4, 0)
    got = pool.allocate()
    assert got.port == low  # the port that could not be bound is still first in line
    pool.release(got)
