"""Property tests: no bytes make the SIP parsing code raise anything but its own errors."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
SEEDS = [
    b"INVITE sip:1004@pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice \\"A\\"" <sip:alice@example.com>;tag=1928301774\r\n'
    b"To: <sip:1004@pbx.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Diversion: <sip:1000@pbx>;reason=no-answer, <tel:+4930123>;reason=unconditional\r\n"
    b"History-Info: <sip:1000@pbx>;index=1, <sip:bot@h?Reason=SIP%3Bcause%3D302>;index=1.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP,
    b"SIP/2.0 180 Ringing\r\n"
    b"v: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK1, SIP/2.0/UDP h;branch=z9hG4bK2\r\n"
    b"f: <sip:a@example.com>;tag=1\r\nt: sip:b@example.com;tag=2\r\n"
    b"i: r1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    b"OPTIONS tel:+1-201-555-0123;phone-context=x SIP/2.0\r\n"
    b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n"
    b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
    b"from: caller<sip:caller@example.com>;tag=323\r\n"
    b"Call-ID: opt\r\ncseq: 0009\r\n  OPTIONS\r\nRequire: foo\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\r\n ", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b'"', b"\\", b"<", b">",
    b"%", b"%00", b"\x00", b"\xff", b"\xc3", b"=", b"@", b"[", b"]", b"?", b"&",
    b"Content-Length: ", b"l: 99999999999999999999", b"-1", b"2147483648", b"SIP/2.0",
    b"SIP/7.0", b"sip:", b"tel:", b"Via: ", b"CSeq: 1 ", b"To: ", b"\r\n\r\n", b"0.0.0.0",
    b"m=audio 0 RTP/AVP ", b"a=rtpmap:", b";tag=", b";index=1.",
]

SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with a few byte-level or token-level mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "token", "dup-line"]))
        if action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif action == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif action == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        else:
            start = data.rfind(b"\r\n", 0, pos) + 2
            end = data.find(b"\r\n", pos)
            if end != -1 and start <= end:
                data[end:end] = b"\r\n" + data[start:end]
    return bytes(data)


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
