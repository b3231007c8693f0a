"""Sans-IO webhook pieces: back-off schedule, signature, and due-time selection (fake clock)."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest

from voicedashd.webhooks.policy import RETRY_CAP, RETRY_FOR, RetryPolicy
from voicedashd.webhooks.schedule import Due, select_due
from voicedashd.webhooks.signing import signature, verify

SECRET = b"s" * 32


def test_back_off_doubles_from_the_base_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(base=30.0)
    ceilings = [policy.delay(n, jitter=0.999999) for n in range(1, 12)]
    assert [round(c) for c in ceilings[:8]] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert all(round(c) == RETRY_CAP for c in ceilings[7:])
    assert policy.delay(10_000, 0.5) == pytest.approx(RETRY_CAP * 0.75)


@pytest.mark.parametrize("failures", [1, 2, 5, 20])
def test_jitter_spreads_each_wait_over_the_upper_half_of_its_ceiling(failures: int) -> None:
    policy = RetryPolicy(base=10.0)
    ceiling = min(RETRY_CAP, 10.0 * 2 ** (failures - 1))
    assert policy.delay(failures, 0.0) == pytest.approx(ceiling / 2)
    assert policy.delay(failures, 0.5) == pytest.approx(ceiling * 0.75)
    assert policy.delay(failures, 0.99) < ceiling


def test_retries_follow_the_schedule_for_24_hours_then_stop() -> None:
    """A receiver that never answers 2xx, tried by the policy on a fake clock."""
    policy, created = RetryPolicy(base=30.0), 1_000_000.0
    now, failures, tries = created, 0, [created]
    while True:
        failures += 1
        at = policy.next_attempt(created, failures, now, jitter=0.5)
        if at is None:
            break
        assert at > now
        now = at
        tries.append(now)
    assert tries[-1] <= created + RETRY_FOR
    # The next wait (at most the cap) would have crossed the 24 h line.
    assert tries[-1] + RETRY_CAP * 0.75 > created + RETRY_FOR
    assert 25 <= len(tries) <= 40
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[:3] == pytest.approx([22.5, 45.0, 90.0])
    assert max(gaps) == pytest.approx(RETRY_CAP * 0.75)


def test_a_small_base_retries_quickly() -> None:
    policy = RetryPolicy(base=0.1)
    assert policy.next_attempt(0.0, 1, 5.0, jitter=0.0) == pytest.approx(5.05)
    assert policy.next_attempt(0.0, 2, 5.0, jitter=0.0) == pytest.approx(5.1)


def test_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"event": {"event": "call_ended"}}'
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body) == expected
    assert verify(SECRET, body, expected)
    assert not verify(SECRET, body + b" ", expected)
    assert not verify(b"t" * 32, body, expected)
    assert not verify(SECRET, body, expected.removeprefix("sha256="))


def _due(name: str, at: float, url: str = "http://a/") -> Due:
    return Due(name, url, at)


def test_only_due_deliveries_start_and_the_next_due_time_wakes() -> None:
    pending = [_due("a", 10.0), _due("b", 11.0), _due("c", 15.0), _due("d", 20.0)]
    chosen = select_due(pending, 12.0, {}, limit=8, per_url=8)
    assert chosen.start == ("a", "b")
    assert chosen.wake_at == 15.0
    # The fake clock moves on: c is due, d wakes next.
    chosen = select_due(pending[2:], 15.0, {}, limit=8, per_url=8)
    assert chosen.start == ("c",)
    assert chosen.wake_at == 20.0
    assert select_due([], 15.0, {}, limit=8, per_url=8).wake_at is None


def test_deliveries_in_flight_are_never_started_twice() -> None:
    pending = [_due("a", 1.0), _due("b", 2.0)]
    chosen = select_due(pending, 5.0, {"a": "http://a/"}, limit=8, per_url=8)
    assert chosen.start == ("b",)


def test_concurrency_is_bounded_in_all_and_per_receiver() -> None:
    pending = [_due(f"a{i}", float(i), "http://a/") for i in range(6)] + [
        _due(f"b{i}", 10.0 + i, "http://b/") for i in range(6)]
    chosen = select_due(pending, 100.0, {}, limit=5, per_url=3)
    assert chosen.start == ("a0", "a1", "a2", "b0", "b1")
    # Work is waiting for room, not for a time: only a finished try can wake.
    assert chosen.wake_at is None
    busy = {"x1": "http://a/", "x2": "http://a/", "x3": "http://b/"}
    chosen = select_due(pending, 100.0, busy, limit=5, per_url=3)
    assert chosen.start == ("a0", "b0")
