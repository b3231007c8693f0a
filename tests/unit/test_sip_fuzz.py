"""Property tests: no bytes make the SIP parsing code raise anything but its own errors.

The generation is shared with `scripts/fuzz-sip` (tests/sip_mutations.py), and so is the whole
input path it drives (tests/sip_fuzz.py), run here on a few thousand messages.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import sip_fuzz
from tests.sip_fuzz import InputPath, Report, fuzz, run_case
from tests.sip_mutations import CALL_ID, SDP, SEEDS, TO_TAG, Case, cases, dialog_messages, mutate
from voicedashd.sip.callee import callee_extension, request_domain
from voicedashd.sip.fields import InvalidHeader, parse_cseq, parse_name_addr, parse_via
from voicedashd.sip.message import Request
from voicedashd.sip.parser import (
    SipParseError,
    StreamFramer,
    make_response,
    parse_message,
    serialize,
)
from voicedashd.sip.sdp import SdpError, build_answer, parse_sdp
from voicedashd.sip.uri import InvalidUri, UnsupportedUriScheme, parse_uri
from voicedashd.sip.validate import check_request

SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A message of the shared generator (a seed or a valid request) with a few mutations."""
    rng = random.Random(draw(st.integers(0, 2**64)))
    source = draw(st.sampled_from([*SEEDS, *dialog_messages(rng, "UDP")]))
    return mutate(rng, source.replace(CALL_ID, b"c1").replace(TO_TAG, b"t1"))


def exercise(data: bytes, *, datagram: bool) -> None:
    """Parse data; whatever parses must serialize, re-parse and be answerable without errors."""
    try:
        msg = parse_message(data, datagram=datagram)
    except SipParseError as exc:
        assert exc.status in (400, 413, 505, 513)
        assert exc.reason.isascii()
        if exc.request is not None:
            # The partial request may lack or garble the very headers a reply copies, so the
            # reply need not parse; building and encoding it must still work.
            serialize(make_response(exc.request, exc.status, exc.reason, to_tag="t"))
        return
    wire = serialize(msg)
    again = parse_message(wire)
    assert serialize(again) == wire
    if isinstance(msg, Request):
        callee_extension(msg)
        request_domain(msg)
        response = check_request(msg, to_tag="t")
        if response is not None:
            parse_message(serialize(response))
        if msg.body:
            with contextlib.suppress(SdpError):
                build_answer(parse_sdp(msg.body), address="192.0.2.5", port=4000,
                             session_id=1, session_version=1)


@SLOW
@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes(data: bytes, datagram: bool) -> None:
    exercise(data, datagram=datagram)


@SLOW
@given(mutated(), st.booleans())
def test_mutated_messages(data: bytes, datagram: bool) -> None:
    exercise(data, datagram=datagram)


@MEDIUM
@given(st.lists(mutated(), min_size=1, max_size=4), st.lists(st.integers(1, 300), max_size=20))
def test_stream_framer(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"\r\n".join(messages)
    framer = StreamFramer()
    framed: list[bytes] = []
    pos = 0
    try:
        for size in [*cuts, len(stream)]:
            framed.extend(framer.feed(stream[pos:pos + size]))
            pos += size
        framed.extend(framer.feed(b""))
    except SipParseError as exc:
        assert exc.status in (400, 413, 513)
    assert sum(len(m) for m in framed) <= len(stream)
    for message in framed:
        exercise(message, datagram=False)


@SLOW
@given(st.text(max_size=200))
def test_field_parsers_raise_only_their_errors(text: str) -> None:
    for parse in (parse_via, parse_name_addr, parse_cseq):
        with contextlib.suppress(InvalidHeader):
            parse(text)
    with contextlib.suppress(InvalidUri, UnsupportedUriScheme):
        parse_uri(text)


@MEDIUM
@given(st.sampled_from(["sip:", "sips:", "tel:", "<sip:", '"x" <sip:']), st.text(max_size=80))
def test_uri_like_text(prefix: str, rest: str) -> None:
    text = prefix + rest
    with contextlib.suppress(InvalidHeader):
        parse_name_addr(text)
    try:
        uri = parse_uri(text)
    except (InvalidUri, UnsupportedUriScheme):
        return
    uri.format()


@MEDIUM
@given(st.binary(max_size=400) | st.builds(lambda p, s: SDP[:p] + s + SDP[p:],
                                           st.integers(0, len(SDP)), st.binary(max_size=10)))
def test_sdp_never_raises_anything_else(body: bytes) -> None:
    with contextlib.suppress(SdpError):
        build_answer(parse_sdp(body), address="192.0.2.5", port=4000, session_id=1,
                     session_version=1)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_whole_input_path_survives_a_small_seeded_fuzz(seed: int) -> None:
    report = fuzz(cases(seed), 3000)
    assert report.failure_count == 0, report.failures[0].error
    assert report.messages >= 3000
    # The generated input reaches every layer: parser errors, calls answered and refused,
    # requests inside dialogs, our BYEs and the answers to them.
    reached = {"malformed 400", "INVITE 200", "INVITE 488", "BYE 200", "BYE 481", "CANCEL 200",
               "OPTIONS 200", "response matched", "stream unframeable"}
    assert reached <= set(report.outcomes), report.outcomes


def test_the_same_seed_generates_the_same_messages() -> None:
    first, second = cases(9), cases(9)
    assert [next(first) for _ in range(200)] == [next(second) for _ in range(200)]


def test_an_exception_in_the_path_is_reported_with_its_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in parse_invite")

    monkeypatch.setattr(sip_fuzz, "parse_invite", broken)
    invite = dialog_messages(random.Random(1), "UDP")[0]
    report = Report()
    run_case(InputPath(), 0, Case("UDP", (invite,)), report)
    assert report.failure_count == 1 and report.outcomes["uncaught exception"] == 1
    [failure] = report.failures
    assert failure.message.startswith(b"INVITE ") and b"Call-ID: fuzz0" in failure.message
    assert "RuntimeError: a bug in parse_invite" in failure.error
