"""Strict RTP's learning and locking (media/strict.py), on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import make_config
from voicedashd.config import ConfigError, load_config
from voicedashd.media.strict import PROBATION, DropLog, Source, StrictRtp, Verdict

SDP: Source = ("192.168.1.20", 4000)  # a NAT'd phone's private address: never a source here
PHONE: Source = ("203.0.113.5", 31000)  # where its packets really come from
STRANGER: Source = ("198.51.100.7", 5004)
PTIME = 0.02


class Stream:
    """One sender's packets: consecutive sequence numbers, 20 ms apart on the fake clock."""

    def __init__(self, strict: StrictRtp, source: Source, ssrc: int, sequence: int) -> None:
        self.strict, self.source, self.ssrc, self.sequence = strict, source, ssrc, sequence

    def send(self, now: float, count: int = 1) -> list[Verdict]:
        verdicts = []
        for i in range(count):
            verdicts.append(self.strict.receive(self.source, self.ssrc, self.sequence,
                                                now + i * PTIME))
            self.sequence = (self.sequence + 1) & 0xFFFF
        return verdicts


def strict(*, allowed: bool = False, relearn_after: float = 2.0) -> StrictRtp:
    return StrictRtp(SDP, sdp_allowed=allowed, relearn_after=relearn_after)


def test_nothing_is_sent_to_an_sdp_address_that_is_not_allowed() -> None:
    assert strict(allowed=False).target is None
    assert strict(allowed=True).target == SDP


def test_a_source_is_learnt_after_its_probation_then_gets_our_rtp() -> None:
    s = strict()
    phone = Stream(s, PHONE, ssrc=7, sequence=65534)  # wraps during probation
    verdicts = phone.send(0.0, PROBATION)
    assert verdicts == [Verdict.PROBATION] * (PROBATION - 1) + [Verdict.ACCEPT]
    assert s.learnt == s.target == PHONE
    assert phone.send(1.0, 5) == [Verdict.ACCEPT] * 5


def test_the_sdp_address_itself_is_learnt_at_once() -> None:
    s = strict()
    assert s.receive(SDP, 1, 100, 0.0) is Verdict.ACCEPT
    assert s.learnt == SDP


def test_a_gap_or_an_ssrc_change_restarts_probation() -> None:
    s = strict()
    assert s.receive(PHONE, 1, 10, 0.00) is Verdict.PROBATION
    assert s.receive(PHONE, 1, 11, 0.02) is Verdict.PROBATION
    assert s.receive(PHONE, 1, 13, 0.04) is Verdict.PROBATION  # gap: 13 counts as the first
    assert s.receive(PHONE, 2, 14, 0.06) is Verdict.PROBATION  # new SSRC: first again
    assert [s.receive(PHONE, 2, 15 + i, 0.08 + i * PTIME) for i in range(PROBATION - 1)] == \
        [Verdict.PROBATION] * (PROBATION - 2) + [Verdict.ACCEPT]


def test_a_flood_of_sequential_packets_is_not_learnt() -> None:
    """PROBATION packets at one instant: faster than any real stream, probation restarts."""
    s = strict()
    assert {s.receive(STRANGER, 9, seq, 1.0) for seq in range(50)} == {Verdict.PROBATION}
    assert s.learnt is None and s.target is None


def test_competing_streams_learn_nothing_while_both_send() -> None:
    s = strict()
    phone, stranger = Stream(s, PHONE, 1, 100), Stream(s, STRANGER, 2, 500)
    for tick in range(20):
        phone.send(tick * PTIME)
        stranger.send(tick * PTIME + 0.001)
    assert s.learnt is None


def test_once_locked_every_other_source_is_dropped() -> None:
    s = strict(allowed=True)
    phone = Stream(s, PHONE, 1, 100)
    phone.send(0.0, PROBATION)
    same_host_other_port = Stream(s, (PHONE[0], PHONE[1] + 2), 1, 200)
    stranger = Stream(s, STRANGER, 3, 300)
    for tick in range(PROBATION, 50):
        now = tick * PTIME
        assert phone.send(now) == [Verdict.ACCEPT]
        assert stranger.send(now + 0.001) == [Verdict.FOREIGN]
        assert same_host_other_port.send(now + 0.002) == [Verdict.FOREIGN]
    # the stranger even copies the phone's SSRC and next sequence number: still dropped
    assert s.receive(STRANGER, 1, phone.sequence, 1.0) is Verdict.FOREIGN
    assert s.target == PHONE


def test_a_silent_source_can_be_replaced_after_relearn_after() -> None:
    s = strict(relearn_after=2.0)
    phone = Stream(s, PHONE, 1, 100)
    phone.send(0.0, PROBATION)
    last = (PROBATION - 1) * PTIME
    moved = Stream(s, STRANGER, 5, 9000)
    assert moved.send(last + 1.9, PROBATION) == [Verdict.FOREIGN] * PROBATION  # too soon
    assert s.target == PHONE
    assert moved.send(last + 2.0, PROBATION) == [Verdict.PROBATION] * (PROBATION - 1) + [
        Verdict.ACCEPT]
    assert s.learnt == s.target == STRANGER
    assert phone.send(last + 3.0) == [Verdict.FOREIGN]  # the old source is now the stranger


def test_the_locked_source_coming_back_ends_a_newcomers_probation() -> None:
    s = strict(relearn_after=2.0)
    phone = Stream(s, PHONE, 1, 100)
    phone.send(0.0, PROBATION)
    newcomer = Stream(s, STRANGER, 5, 9000)
    assert newcomer.send(3.0, 2) == [Verdict.PROBATION] * 2
    assert phone.send(3.05) == [Verdict.ACCEPT]  # heard again: it keeps the lock
    assert newcomer.send(3.06, PROBATION) == [Verdict.FOREIGN] * PROBATION
    assert s.learnt == PHONE


def test_a_changed_sdp_address_is_learnt_afresh() -> None:
    s = strict(allowed=True)
    Stream(s, PHONE, 1, 100).send(0.0, PROBATION)
    s.sdp_changed(SDP, sdp_allowed=True)  # the same address (e.g. a codec change): no relearn
    assert s.learnt == PHONE
    new_sdp = ("10.9.9.9", 6000)
    s.sdp_changed(new_sdp, sdp_allowed=False)
    assert s.learnt is None and s.target is None
    newcomer = Stream(s, ("10.0.0.1", 7000), 2, 50)
    assert newcomer.send(0.2, PROBATION)[-1] is Verdict.ACCEPT  # no relearn_after wait
    assert s.target == ("10.0.0.1", 7000)
    s.sdp_changed(("10.0.0.2", 7002), sdp_allowed=True)
    assert s.target == ("10.0.0.2", 7002)  # an allowed new address gets RTP at once


def test_probation_is_at_least_one_packet() -> None:
    with pytest.raises(ValueError, match="probation"):
        StrictRtp(SDP, sdp_allowed=False, relearn_after=1.0, probation=0)


def test_drop_log_reports_the_first_drop_then_one_count_per_interval() -> None:
    log = DropLog(interval=10.0)
    reports = [(t / 50, n) for t in range(50 * 25) if (n := log.dropped(t / 50))]
    assert reports == [(0.0, 1), (10.0, 500), (20.0, 500)]
    assert log.pending == 249


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        ('allowed_peers = ["10.0.0.0/33"]', "media.allowed_peers: not a CIDR: '10.0.0.0/33'"),
        ('allowed_peers = "10.0.0.0/8"', "media.allowed_peers: expected a list of CIDRs"),
        ('relearn_after = "5"', "media.relearn_after: not a duration"),
        ('relearn_after = "50ms"', 'media.relearn_after: must be between "100ms" and "1h"'),
        ('relearn_after = "2h"', 'media.relearn_after: must be between "100ms" and "1h"'),
    ],
)
def test_strict_rtp_keys_are_validated_with_the_key_named(
        tmp_path: Path, media: str, expected: str) -> None:
    config = make_config(tmp_path)
    config.write()
    config.path.write_text(config.path.read_text().replace("[media]\n", f"[media]\n{media}\n"))
    with pytest.raises(ConfigError) as info:
        load_config(config.path)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(expected), (
        info.value.problems)


def test_allowed_peers_holds_addresses_not_names(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write()
    config.path.write_text(config.path.read_text().replace(
        "[media]\n", '[media]\nallowed_peers = ["192.0.2.0/24", "2001:db8::1"]\n'))
    media = load_config(config.path).media
    assert media.relearn_after == 5.0  # the default
    assert media.is_allowed_peer("192.0.2.77") and media.is_allowed_peer("2001:db8::1")
    assert not media.is_allowed_peer("192.0.3.1")
    assert not media.is_allowed_peer("localhost")  # never looked up
