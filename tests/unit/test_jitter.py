"""The reorder buffer: order by 16-bit sequence (wrapping), duplicates dropped, bounded wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicedashd.media.jitter import JitterBuffer, seq_delta


def feed(buffer: JitterBuffer[int], seqs: list[int], start: float = 0.0,
         step: float = 0.001) -> list[int]:
    out: list[int] = []
    for i, seq in enumerate(seqs):
        out += buffer.push(seq, seq, start + i * step)
    return out


def test_seq_delta_wraps() -> None:
    assert seq_delta(1, 65535) == 2
    assert seq_delta(65535, 1) == -2
    assert seq_delta(100, 100) == 0
    assert seq_delta(32767, 0) == 32767
    assert seq_delta(32768, 0) == -32768


def test_in_order_packets_are_released_at_once() -> None:
    buffer: JitterBuffer[int] = JitterBuffer()
    for seq in range(10, 20):
        assert buffer.push(seq, seq, 0.0) == [seq]
    assert buffer.next_deadline is None


def test_reordering_is_undone() -> None:
    buffer: JitterBuffer[int] = JitterBuffer()
    assert feed(buffer, [1, 3, 4, 2, 5]) == [1, 2, 3, 4, 5]
    assert buffer.stats.reordered == 1


def test_duplicates_are_dropped_whether_held_or_already_released() -> None:
    buffer: JitterBuffer[int] = JitterBuffer()
    assert feed(buffer, [1, 1, 3, 3, 2, 2, 1, 4]) == [1, 2, 3, 4]
    assert buffer.stats.duplicates == 1  # the second 3, while held
    assert buffer.stats.late == 3  # second 1 (twice) and second 2, after release


def test_sequence_numbers_wrap_around() -> None:
    buffer: JitterBuffer[int] = JitterBuffer()
    assert feed(buffer, [65533, 65535, 65534, 1, 0, 0, 2]) == [65533, 65534, 65535, 0, 1, 2]


def test_a_gap_waits_at_most_the_delay() -> None:
    buffer: JitterBuffer[int] = JitterBuffer(delay=0.06)
    assert buffer.push(1, 1, 0.00) == [1]
    assert buffer.push(3, 3, 0.02) == []
    assert buffer.push(4, 4, 0.04) == []
    assert buffer.next_deadline == pytest.approx(0.08)
    assert buffer.pop_due(0.079) == []
    assert buffer.pop_due(0.08) == [3, 4]
    assert buffer.stats.lost == 1
    assert buffer.push(2, 2, 0.09) == []  # too late now
    assert buffer.stats.late == 1
    assert buffer.push(5, 5, 0.10) == [5]


def test_the_wait_is_counted_from_the_oldest_held_packet() -> None:
    buffer: JitterBuffer[int] = JitterBuffer(delay=0.05)
    feed(buffer, [10])
    buffer.push(13, 13, 0.00)
    buffer.push(12, 12, 0.04)
    assert buffer.pop_due(0.05) == [12, 13]  # 11 is lost; 12 need not wait its own 50 ms
    assert buffer.stats.lost == 1


def test_a_restarted_sender_is_followed_after_one_confirming_packet() -> None:
    buffer: JitterBuffer[int] = JitterBuffer()
    feed(buffer, [100, 101])
    assert buffer.push(20000, 20000, 0.0) == []  # a stray jump alone is ignored
    assert buffer.push(102, 102, 0.0) == [102]
    assert buffer.push(30000, 30000, 0.0) == []
    assert buffer.push(30001, 30001, 0.0) == [30000, 30001]
    assert buffer.push(30002, 30002, 0.0) == [30002]
    assert buffer.stats.restarts == 1


def test_flush_and_reset() -> None:
    buffer: JitterBuffer[int] = JitterBuffer()
    feed(buffer, [1, 3, 5])
    assert buffer.flush() == [3, 5]
    buffer.reset()
    assert buffer.push(9000, 9000, 0.0) == [9000]


@given(st.integers(0, 65535), st.permutations(list(range(12))),
       st.lists(st.integers(0, 11), max_size=6))
def test_any_shuffle_with_duplicates_comes_out_in_order_once(
        base: int, order: list[int], repeats: list[int]) -> None:
    """Reordering within the buffer's reach loses nothing and repeats nothing."""
    buffer: JitterBuffer[int] = JitterBuffer(delay=1.0)
    seqs = [(base + i) % 65536 for i in [0, *[o for o in order if o], *repeats]]
    out = feed(buffer, seqs) + buffer.pop_due(10.0)
    assert out == [(base + i) % 65536 for i in range(12)]
