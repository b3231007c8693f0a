"""SDP parsing and the audio offer/answer (RFC 4566, RFC 3264)."""

from __future__ import annotations

import pytest

from voicedashd.sip.sdp import (
    DEFAULT_CODECS,
    Answer,
    InvalidSdp,
    NoCommonCodec,
    RtpMap,
    SdpError,
    build_answer,
    parse_sdp,
)

ASTERISK_OFFER = (
    b"v=0\r\n"
    b"o=- 1195617434 1195617434 IN IP4 192.0.2.20\r\n"
    b"s=Asterisk\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 14086 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=maxptime:150\r\n"
    b"a=sendrecv\r\n"
)


def answer(offer: bytes, codecs: tuple[str, ...] = DEFAULT_CODECS) -> Answer:
    """Answer an offer from 192.0.2.5:40000."""
    return build_answer(
        parse_sdp(offer), address="192.0.2.5", port=40000, session_id=42, session_version=1,
        codecs=codecs,
    )


def test_parse_offer() -> None:
    session = parse_sdp(ASTERISK_OFFER)
    audio = session.audio
    assert audio is not None
    assert session.connection == "192.0.2.20"
    assert session.session_name == "Asterisk"
    assert (audio.port, audio.proto, audio.formats) == (14086, "RTP/AVP", ["0", "8", "101"])
    assert audio.rtpmaps[101] == RtpMap(101, "telephone-event", 8000)
    assert audio.fmtps == {101: "0-16"}
    assert (audio.ptime, audio.direction, audio.connection) == (20, "sendrecv", "192.0.2.20")
    assert not session.on_hold


def test_pcmu_pcma_telephone_event_answer() -> None:
    result = answer(ASTERISK_OFFER)
    assert (result.codec, result.payload_type, result.dtmf_payload_type) == ("PCMU", 0, 101)
    assert (result.ptime, result.direction, result.clock_rate) == (20, "sendrecv", 8000)
    assert (result.remote_address, result.remote_port, result.on_hold) == (
        "192.0.2.20", 14086, False)
    assert result.body == (
        b"v=0\r\n"
        b"o=- 42 1 IN IP4 192.0.2.5\r\n"
        b"s=voicedashd\r\n"
        b"c=IN IP4 192.0.2.5\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    again = parse_sdp(result.body).audio
    assert again is not None and again.payload_types == [0, 101]


BARESIP_OFFER = (  # what baresip 1.0 offers (its order: PCMU, PCMA, G.722)
    b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 10000 RTP/AVP 0 8 9 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
)


def test_our_preference_decides_the_codec_not_the_offer_order() -> None:
    result = answer(BARESIP_OFFER)
    assert (result.codec, result.payload_type, result.clock_rate) == ("G722", 9, 8000)
    assert result.dtmf_payload_type == 101  # telephone-event as before, at the 8 kHz clock
    assert b"m=audio 40000 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n" in result.body
    assert b"a=rtpmap:101 telephone-event/8000\r\n" in result.body
    offer = ASTERISK_OFFER.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 8 0 101")
    assert answer(offer).codec == "PCMU"  # no G.722 offered: PCMU, our next choice
    assert answer(offer, ("PCMA", "PCMU")).codec == "PCMA"
    assert answer(BARESIP_OFFER, ("PCMA", "G722")).codec == "PCMA"
    assert answer(BARESIP_OFFER, ("PCMU",)).codec == "PCMU"
    assert answer(ASTERISK_OFFER, ("PCMA",)).payload_type == 8


def test_an_offer_of_g722_alone_gets_g722_static_or_dynamic() -> None:
    only = BARESIP_OFFER.replace(b"RTP/AVP 0 8 9 101", b"RTP/AVP 9")
    assert (answer(only).codec, answer(only).payload_type) == ("G722", 9)
    assert answer(only).dtmf_payload_type is None
    bare = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
            b"m=audio 5004 RTP/AVP 9\r\n")  # static type 9, no rtpmap: G722/8000 by RFC 3551
    assert answer(bare).codec == "G722"
    dynamic = bare.replace(b"RTP/AVP 9\r\n", b"RTP/AVP 98\r\na=rtpmap:98 G722/8000\r\n")
    assert (answer(dynamic).codec, answer(dynamic).payload_type) == ("G722", 98)
    with pytest.raises(NoCommonCodec):
        answer(only, ("PCMU", "PCMA"))
    with pytest.raises(NoCommonCodec):  # a 16,000 Hz clock is not RFC 3551's G.722
        answer(dynamic.replace(b"G722/8000", b"G722/16000"))


def test_pcma_only_static_payload_without_rtpmap() -> None:
    offer = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.30\r\ns=-\r\nt=0 0\r\n"
        b"m=audio 5004 RTP/AVP 8\r\nc=IN IP4 192.0.2.30\r\n"
    )
    result = answer(offer)
    assert (result.codec, result.payload_type, result.dtmf_payload_type) == ("PCMA", 8, None)
    assert (result.remote_address, result.remote_port, result.ptime) == ("192.0.2.30", 5004, 20)
    assert b"m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n" in result.body
    assert b"telephone-event" not in result.body


def test_dynamic_telephone_event_number_is_kept() -> None:
    offer = ASTERISK_OFFER.replace(b"101", b"96")
    result = answer(offer)
    assert result.dtmf_payload_type == 96
    assert b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16\r\n" in result.body


def test_telephone_event_at_other_clock_rate_is_ignored() -> None:
    offer = ASTERISK_OFFER.replace(b"telephone-event/8000", b"telephone-event/48000")
    assert answer(offer).dtmf_payload_type is None


def test_g729_only_has_no_common_codec() -> None:
    offer = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
        b"m=audio 5004 RTP/AVP 18 101\r\na=rtpmap:18 G729/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
    )
    with pytest.raises(NoCommonCodec):
        answer(offer)


def test_srtp_only_offer_has_no_common_codec() -> None:
    with pytest.raises(NoCommonCodec):
        answer(ASTERISK_OFFER.replace(b"RTP/AVP", b"RTP/SAVP"))


def test_dynamic_payload_named_pcmu_is_accepted_but_wideband_is_not() -> None:
    offer = ASTERISK_OFFER.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 97 98 101").replace(
        b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:97 PCMU/16000").replace(
        b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:98 pcma/8000")
    result = answer(offer)
    assert (result.codec, result.payload_type) == ("PCMA", 98)


@pytest.mark.parametrize(
    ("change", "answered", "on_hold"),
    [
        ((b"a=sendrecv", b"a=sendonly"), "recvonly", True),
        ((b"a=sendrecv", b"a=inactive"), "inactive", True),
        ((b"a=sendrecv", b"a=recvonly"), "sendonly", False),
        ((b"c=IN IP4 192.0.2.20", b"c=IN IP4 0.0.0.0"), "recvonly", True),
    ],
)
def test_hold_offers(change: tuple[bytes, bytes], answered: str, on_hold: bool) -> None:
    offer = ASTERISK_OFFER.replace(*change)
    assert parse_sdp(offer).on_hold == on_hold
    result = answer(offer)
    assert result.direction == answered
    assert f"a={answered}\r\n".encode() in result.body
    assert result.on_hold == on_hold


def test_session_level_direction_applies_to_media() -> None:
    offer = ASTERISK_OFFER.replace(b"a=sendrecv\r\n", b"").replace(
        b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")
    session = parse_sdp(offer)
    assert session.direction == "sendonly"
    assert session.on_hold
    assert answer(offer).direction == "recvonly"


@pytest.mark.parametrize(("offered", "echoed"), [(b"30", 30), (b"20.0", 20), (None, 20)])
def test_ptime_is_echoed(offered: bytes | None, echoed: int) -> None:
    if offered is None:
        offer = ASTERISK_OFFER.replace(b"a=ptime:20\r\n", b"")
    else:
        offer = ASTERISK_OFFER.replace(b"a=ptime:20", b"a=ptime:" + offered)
    result = answer(offer)
    assert result.ptime == echoed
    assert f"a=ptime:{echoed}\r\n".encode() in result.body


def test_connection_at_session_level_and_media_override() -> None:
    offer = ASTERISK_OFFER.replace(b"m=audio 14086 RTP/AVP 0 8 101\r\n",
                                   b"m=audio 14086 RTP/AVP 0 8 101\r\nc=IN IP4 198.51.100.7\r\n")
    session = parse_sdp(offer)
    assert session.connection == "192.0.2.20"
    assert answer(offer).remote_address == "198.51.100.7"
    assert answer(ASTERISK_OFFER).remote_address == "192.0.2.20"


def test_missing_connection_is_invalid() -> None:
    offer = ASTERISK_OFFER.replace(b"c=IN IP4 192.0.2.20\r\n", b"")
    with pytest.raises(InvalidSdp):
        answer(offer)


def test_other_streams_are_rejected_with_port_zero() -> None:
    offer = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=video 3227 RTP/AVP 31\r\na=rtpmap:31 H261/90000\r\n"
        b"m=audio 0 RTP/AVP 0\r\n"
        b"m=audio 49217 RTP/AVP 0 12\r\n"
    )
    result = answer(offer)
    lines = result.body.decode().split("\r\n")
    assert [line for line in lines if line.startswith("m=")] == [
        "m=video 0 RTP/AVP 31", "m=audio 0 RTP/AVP 0", "m=audio 40000 RTP/AVP 0"]
    assert result.remote_port == 49217


def test_ipv6_answer() -> None:
    offer = ASTERISK_OFFER.replace(b"IN IP4 192.0.2.20", b"IN IP6 2001:db8::20")
    result = build_answer(parse_sdp(offer), address="2001:db8::5", port=4000, session_id=1,
                          session_version=2)
    assert result.remote_address == "2001:db8::20"
    assert b"c=IN IP6 2001:db8::5\r\n" in result.body


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"hello",
        b"v=1\r\n",
        b"v=0\r\nnot a line\r\n",
        b"v=0\r\nc=IN IP4\r\n",
        b"v=0\r\nm=audio\r\n",
        b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
        b"v=0\r\nm=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
        b"v=0\r\nm=audio 5004 RTP/AVP 0\r\na=ptime:fast\r\n",
    ],
)
def test_invalid_sdp(body: bytes) -> None:
    with pytest.raises(InvalidSdp) as info:
        parse_sdp(body)
    assert isinstance(info.value, SdpError)


@pytest.mark.parametrize(("line", "problem"), [
    (b"c=IN IP4 hang.invalid", "c= address 'hang.invalid' is not an IP address"),
    (b"c=IN IP4 localhost/127", "c= address 'localhost' is not an IP address"),
    (b"c=IN IP6 192.0.2.20", "c= address '192.0.2.20' is not an IP6 address"),
    (b"c=IN IP4 ::1", "c= address '::1' is not an IP4 address"),
])
@pytest.mark.parametrize("level", ["session", "media"])
def test_connection_must_be_an_ip_literal(line: bytes, problem: str, level: str) -> None:
    if level == "session":
        offer = ASTERISK_OFFER.replace(b"c=IN IP4 192.0.2.20", line)
    else:
        offer = ASTERISK_OFFER.replace(b"a=ptime:20\r\n", b"a=ptime:20\r\n" + line + b"\r\n")
    with pytest.raises(InvalidSdp) as info:
        parse_sdp(offer)
    assert str(info.value) == problem


def test_ip_literals_of_both_families_and_multicast_ttl_are_accepted() -> None:
    assert parse_sdp(ASTERISK_OFFER.replace(b"IN IP4 192.0.2.20\r\nt", b"IN IP6 ::1\r\nt")
                     ).connection == "::1"
    assert parse_sdp(ASTERISK_OFFER.replace(b"192.0.2.20\r\nt", b"233.252.0.1/127\r\nt")
                     ).connection == "233.252.0.1"
