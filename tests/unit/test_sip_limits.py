"""The sans-IO limiter of untrusted SIP sources: token buckets, refusal windows, the table."""

from __future__ import annotations

from voicedashd.config import SipConfig
from voicedashd.metrics import Metrics
from voicedashd.sip.limits import (
    REFUSALS_PER_SECOND,
    Decision,
    Reason,
    SourceLimiter,
    SourceLimits,
    TokenBucket,
    Verdict,
)
from voicedashd.sip.serve import Admission

LIMITS = SourceLimits(rate=2.0, burst=3, max_transactions=5, refusal_window=10.0)


def verdicts(limiter: SourceLimiter, host: str, times: list[float],
             limits: SourceLimits = LIMITS) -> list[Verdict]:
    return [limiter.check(host, t, limits).verdict for t in times]


def test_bucket_spends_the_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(3, now=0.0)
    assert [bucket.take(2.0, 3, 0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(2.0, 3, 0.49) is False  # 0.98 of a token
    assert bucket.take(2.0, 3, 0.5) is True
    assert bucket.take(2.0, 3, 100.0) is True  # refilled, but never beyond the burst
    assert [bucket.take(2.0, 3, 100.0) for _ in range(3)] == [True, True, False]


def test_bucket_ignores_a_clock_that_goes_back() -> None:
    bucket = TokenBucket(1, now=10.0)
    assert bucket.take(1.0, 1, 10.0) is True
    assert bucket.take(1.0, 1, 5.0) is False
    assert bucket.take(1.0, 1, 11.0) is True


def test_over_the_rate_one_refusal_per_window_then_silence() -> None:
    limiter = SourceLimiter()
    assert verdicts(limiter, "127.0.0.5", [0.0] * 6) == [
        Verdict.ADMIT, Verdict.ADMIT, Verdict.ADMIT, Verdict.REFUSE, Verdict.DROP, Verdict.DROP]
    assert limiter.check("127.0.0.5", 0.0, LIMITS) == Decision(Verdict.DROP, Reason.RATE)
    # Tokens come back at the rate: a paced source is admitted again, and still refused
    # only once per window when it floods.
    assert verdicts(limiter, "127.0.0.5", [0.5, 0.5]) == [Verdict.ADMIT, Verdict.DROP]
    assert verdicts(limiter, "127.0.0.5", [9.9] * 4 + [9.99]) == [Verdict.ADMIT] * 3 + [
        Verdict.DROP, Verdict.DROP]
    assert verdicts(limiter, "127.0.0.5", [10.0, 10.0]) == [Verdict.REFUSE, Verdict.DROP]


def test_sources_are_limited_apart() -> None:
    limiter = SourceLimiter()
    verdicts(limiter, "127.0.0.5", [0.0] * 10)
    assert verdicts(limiter, "127.0.0.6", [0.0] * 3) == [Verdict.ADMIT] * 3


def test_transaction_cap_refuses_every_source_until_one_ends() -> None:
    limiter = SourceLimiter()
    for n in range(5):
        assert limiter.check(f"127.0.0.{n + 10}", 0.0, LIMITS).verdict is Verdict.ADMIT
        limiter.opened(("branch", n))
    assert limiter.transactions == 5
    assert limiter.check("127.0.0.20", 0.0, LIMITS) == Decision(Verdict.REFUSE,
                                                                 Reason.TRANSACTIONS)
    assert limiter.check("127.0.0.20", 0.1, LIMITS) == Decision(Verdict.DROP,
                                                                 Reason.TRANSACTIONS)
    limiter.closed(("branch", 2))
    limiter.closed(("never", "opened"))
    assert limiter.transactions == 4
    assert limiter.check("127.0.0.20", 0.2, LIMITS).verdict is Verdict.ADMIT


def test_the_table_is_bounded_and_forgets_the_least_recent_source() -> None:
    limiter = SourceLimiter(max_sources=3)
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        verdicts(limiter, host, [0.0] * 4)  # each spent its burst and was refused
    verdicts(limiter, "127.0.0.2", [0.0])  # seen again: now the most recent
    assert limiter.check("127.0.0.9", 0.0, LIMITS).verdict is Verdict.ADMIT
    assert limiter.sources == 3
    # 127.0.0.3 was forgotten (a fresh burst); 127.0.0.2 and .4 are still limited.
    assert limiter.check("127.0.0.3", 0.0, LIMITS).verdict is Verdict.ADMIT
    assert limiter.check("127.0.0.2", 0.0, LIMITS).verdict is Verdict.DROP
    for n in range(10_000):
        limiter.check(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 1.0, LIMITS)
    assert limiter.sources == 3


def test_refusals_across_sources_are_rate_limited_too() -> None:
    limiter = SourceLimiter()
    limits = SourceLimits(rate=1.0, burst=1, max_transactions=5)
    refused = 0
    for n in range(1000):  # a thousand spoofed sources, each over its rate at once
        host = f"127.1.{n // 256}.{n % 256}"
        limiter.check(host, 0.0, limits)
        refused += limiter.check(host, 0.0, limits).verdict is Verdict.REFUSE
    assert refused == REFUSALS_PER_SECOND


def sip_config(**keys: object) -> SipConfig:
    return SipConfig.model_validate({"listen": "127.0.0.1:5060", **keys})


def test_admission_spares_trusted_sources_and_follows_a_reload() -> None:
    metrics = Metrics()
    current = [sip_config(trusted=["127.0.0.1/32"], untrusted_rate_limit=1,
                          untrusted_rate_burst=1, untrusted_max_transactions=1)]
    admission = Admission(lambda: current[0], metrics)
    assert all(admission.check("127.0.0.1", 0.0) is None for _ in range(100))
    assert admission.check("127.0.0.5", 0.0) == Decision(Verdict.ADMIT)
    admission.opened("t1", "127.0.0.5")
    admission.opened("t2", "127.0.0.1")  # trusted: not counted
    assert metrics.sip_untrusted_transactions._value.get() == 1
    assert admission.check("127.0.0.6", 0.0) == Decision(Verdict.REFUSE, Reason.TRANSACTIONS)
    assert admission.check("127.0.0.5", 0.0) == Decision(Verdict.REFUSE, Reason.RATE)
    assert admission.check("127.0.0.5", 0.1) == Decision(Verdict.DROP, Reason.RATE)
    limited = metrics.sip_untrusted_limited
    assert limited.labels("rate", "refused")._value.get() == 1
    assert limited.labels("rate", "dropped")._value.get() == 1
    assert limited.labels("transactions", "refused")._value.get() == 1
    admission.closed("t1")
    admission.closed("t2")
    assert metrics.sip_untrusted_transactions._value.get() == 0
    # A reload that trusts 127.0.0.5 frees it at once; the new limits apply to the others.
    current[0] = sip_config(trusted=["127.0.0.0/29"], untrusted_rate_burst=3)
    assert admission.check("127.0.0.5", 0.2) is None
    assert [admission.check("127.0.0.9", 0.2).verdict for _ in range(4)] == [  # type: ignore[union-attr]
        Verdict.ADMIT] * 3 + [Verdict.REFUSE]
