"""SIP parser, serializer, stream framer and make_response, incl. RFC 4475 torture messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from voicedashd.sip.fields import (
    InvalidHeader,
    NameAddr,
    Via,
    format_name_addr,
    format_via,
    header_values,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_header_values,
)
from voicedashd.sip.message import Headers, Request, Response
from voicedashd.sip.parser import (
    MAX_MESSAGE_SIZE,
    SipParseError,
    StreamFramer,
    make_response,
    parse_message,
    serialize,
)

SDP = (
    b"v=0\r\n"
    b"o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 49217 RTP/AVP 0 12\r\n"
    b"m=video 3227 RTP/AVP 31\r\n"
    b"a=rtpmap:31 LPC\r\n"
)
assert len(SDP) == 150

INVITE = (
    b"INVITE sip:1004@pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    b"To: <sip:1004@pbx.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Record-Route: <sip:proxy.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 150\r\n"
    b"\r\n" + SDP
)


def _request(text: bytes) -> Request:
    msg = parse_message(text)
    assert isinstance(msg, Request)
    return msg


# ---------------------------------------------------------------------------------------------
# Round trips


def test_parse_basic_invite() -> None:
    msg = _request(INVITE)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:1004@pbx.example.com"
    assert msg.version == "SIP/2.0"
    assert msg.body == SDP
    assert msg.headers.get_all("Via") == [
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
        "SIP/2.0/TCP proxy.example.com;branch=z9hG4bK1",
    ]
    assert msg.headers.get("call-id") == "a84b4c76e66710@pc33.example.com"


def test_serialize_round_trip_is_exact_for_canonical_input() -> None:
    assert serialize(parse_message(INVITE)) == INVITE


def test_serialize_rewrites_content_length_and_uses_crlf() -> None:
    msg = _request(INVITE)
    msg.body = b"v=0\r\n"
    out = serialize(msg)
    assert b"Content-Length: 5\r\n" in out
    assert out.endswith(b"\r\n\r\nv=0\r\n")
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_serialize_adds_missing_content_length() -> None:
    response = Response(200, "OK", Headers.of([("Call-ID", "x")]))
    assert serialize(response) == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"


def test_serialize_refuses_header_injection() -> None:
    response = Response(200, "OK", Headers.of([("Subject", "a\r\nVia: evil")]))
    with pytest.raises(ValueError, match="CR or LF"):
        serialize(response)


def test_round_trip_of_folded_compact_message_is_stable() -> None:
    folded = (
        b"OPTIONS sip:user@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP host.example.com\r\n ;branch=z9hG4bKa\r\n"
        b"f: <sip:caller@example.com>\r\n\t;tag=1\r\n"
        b"t: sip:user@example.com\r\n"
        b"i: fold-1\r\n"
        b"CSeq: 1\r\n OPTIONS\r\n"
        b"l: 0\r\n\r\n"
    )
    first = parse_message(folded)
    assert first.headers.get("Via") == "SIP/2.0/UDP host.example.com ;branch=z9hG4bKa"
    assert first.headers.get("From") == "<sip:caller@example.com> ;tag=1"
    wire = serialize(first)
    assert b"Content-Length: 0\r\n" in wire
    second = parse_message(wire)
    assert second.headers.items == first.headers.items
    assert serialize(second) == wire


def test_response_round_trip() -> None:
    raw = (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.com>;tag=1\r\n"
        b"To: <sip:b@example.com>;tag=2\r\n"
        b"Call-ID: r1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(raw)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert serialize(msg) == raw


def test_invalid_utf8_survives_a_round_trip() -> None:
    raw = INVITE.replace(b'"Alice"', b'"Al\xff\xfece"')
    msg = _request(raw)
    assert serialize(msg) == raw


# ---------------------------------------------------------------------------------------------
# Datagram body rules (RFC 3261 §18.3)


def test_datagram_without_content_length_takes_rest_as_body() -> None:
    raw = INVITE.replace(b"Content-Length: 150\r\n", b"")
    assert _request(raw).body == SDP


def test_stream_message_without_content_length_has_empty_body() -> None:
    raw = INVITE.replace(b"Content-Length: 150\r\n", b"")
    assert parse_message(raw, datagram=False).body == b""


def test_shorter_content_length_truncates_body() -> None:
    raw = INVITE.replace(b"Content-Length: 150", b"Content-Length: 4")
    assert _request(raw).body == b"v=0\r"


def test_longer_content_length_is_400_with_partial_request() -> None:
    raw = INVITE.replace(b"Content-Length: 150", b"Content-Length: 151")
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    assert info.value.status == 400
    assert info.value.reason == "Bad Request - Content-Length 151 exceeds the 150 bytes of body"
    request = info.value.request
    assert request is not None
    assert request.headers.get("Call-ID") == "a84b4c76e66710@pc33.example.com"
    assert len(request.headers.get_all("Via")) == 2


def test_leading_crlf_before_start_line_is_ignored() -> None:
    assert _request(b"\r\n\r\n" + INVITE).method == "INVITE"


# ---------------------------------------------------------------------------------------------
# RFC 4475 torture messages and other malformed or odd input


@dataclass(frozen=True)
class Parses:
    """The message parses; the given fields have these values."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str | None = None
    headers: dict[str, str | list[str]] = field(default_factory=dict)
    body: bytes | None = None
    check: Callable[[Request | Response], object] | None = None


@dataclass(frozen=True)
class Rejects:
    """The parser raises SipParseError with this status; reason contains says."""

    status: int
    says: str
    request: bool


WSINV = (
    b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
    b"TO :\r\n"
    b" sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
    b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n'
    b"  ;\r\n"
    b"  tag = 98asjd8\r\n"
    b"MaX-fOrWaRdS: 0068\r\n"
    b"Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
    b"Content-Length   : 150\r\n"
    b"cseq: 0009\r\n"
    b"  INVITE\r\n"
    b"Via  : SIP  /   2.0\r\n"
    b" /UDP\r\n"
    b"    192.0.2.2;rport;branch=390skdjuw\r\n"
    b"s :\r\n"
    b"NewFangledHeader:   newfangled value\r\n"
    b" continued newfangled value\r\n"
    b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Route:\r\n"
    b" <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
    b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n"
    b"  branch  =   z9hG4bK9ikj8  ,\r\n"
    b" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n"
    b" z9hG4bK30239\r\n"
    b'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\r\n'
    b"      newvalue ;\r\n"
    b"  secondparam ; q = 0.33\r\n"
    b"\r\n" + SDP
)


def _wsinv_fields(msg: Request | Response) -> None:
    vias = [parse_via(v) for v in header_values(msg.headers, "Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    sender = parse_name_addr(msg.headers.get("From") or "")
    assert sender.display_name == 'J Rosenberg \\"'
    assert sender.tag == "98asjd8"
    assert parse_name_addr(msg.headers.get("To") or "").tag == "1918181833n"
    contact = parse_name_addr(msg.headers.get("Contact") or "")
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert parse_cseq(msg.headers.get("CSeq") or "") == (9, "INVITE")


INTMETH = (
    b"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy"
    b"?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n"
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)'
    b"&isn't+it$/crazy?,/;;*@example.com>\r\n"
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    b'"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9"'
    b";tag=_token~1'+`*%!-.\r\n"
    b"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n"
    b"CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n"
    b"Max-Forwards: 255\r\n"
    b"extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb\r\n"
    b"Content-Length: 0\r\n\r\n"
)

ESC01 = (
    b"INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n"
    b"To: sip:%75se%72@example.com\r\n"
    b"From: <sip:I%20have%20spaces@example.net>;tag=938\r\n"
    b"Max-Forwards: 87\r\n"
    b"i: esc01.239409asdfakjkn23onasd0-3234\r\n"
    b"CSeq: 234234 INVITE\r\n"
    b"Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\r\n"
    b"C: application/sdp\r\n"
    b"Contact:\r\n"
    b"  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\r\n"
    b"Content-Length: 150\r\n"
    b"\r\n" + SDP
)

ESCNULL = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"To: sip:null-%00-null@example.com\r\n"
    b"From: sip:null-%00-null@example.com;tag=839923423\r\n"
    b"Max-Forwards: 70\r\n"
    b"Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\r\n"
    b"CSeq: 14398234 REGISTER\r\n"
    b"Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n"
    b"Contact: <sip:%00@host5.example.com>\r\n"
    b"Contact: <sip:%00%00@host5.example.com>\r\n"
    b"L:0\r\n\r\n"
)

ESC02 = (
    b"RE%47IST%45R sip:registrar.example.com SIP/2.0\r\n"
    b'To: "%Z%45" <sip:resource@example.com>\r\n'
    b'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23\r\n'
    b"Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\r\n"
    b"Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\r\n"
    b"CSeq: 29344 RE%47IST%45R\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:alias1@host1.example.com>\r\n"
    b"C%6Fntact: <sip:alias2@host2.example.com>\r\n"
    b"Contact: <sip:alias3@host3.example.com>\r\n"
    b"l: 0\r\n\r\n"
)

LWSDISP = (
    b"OPTIONS sip:user@example.com SIP/2.0\r\n"
    b"To: sip:user@example.com\r\n"
    b"From: caller<sip:caller@example.com>;tag=323\r\n"
    b"Max-Forwards: 70\r\n"
    b"Call-ID: lwsdisp.1234abcd@funky.example.com\r\n"
    b"CSeq: 60 OPTIONS\r\n"
    b"Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\r\n"
    b"l: 0\r\n\r\n"
)

LONGREQ = (
    b"INVITE sip:user@example.com SIP/2.0\r\n"
    b'To: "I have a user name of ' + b"extreme" * 60 + b' proportion"<sip:user@example.com:6000;'
    b"unknownparam1=very" + b"long" * 50 + b"value;longparam" + b"name" * 40 + b"=shortvalue>\r\n"
    b"From: sip:caller@example.net;tag=12" + b"98" * 100 + b"\r\n"
    b"Call-ID: longreq.one" + b"really" * 80 + b"longcallid\r\n"
    b"CSeq: 3882340 INVITE\r\n"
    b"Max-Forwards: 70\r\n"
    + b"".join(
        b"Via: SIP/2.0/TCP sip%d.example.com;branch=z9hG4bK%d\r\n" % (i, i) for i in range(40)
    )
    + b"Via: "
    + b", ".join(b"SIP/2.0/UDP 192.0.2.%d;branch=z9hG4bKx%d" % (i, i) for i in range(60))
    + b"\r\n"
    b"Contact: <sip:amazinglylongcallername" + b"x" * 300 + b"@host5.example.net>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"l: 150\r\n\r\n" + SDP
)

DBLREQ = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"To: sip:j.user@example.com\r\n"
    b"From: sip:j.user@example.com;tag=43251j3j324\r\n"
    b"Max-Forwards: 8\r\n"
    b"I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n"
    b"Contact: sip:j.user@host.example.com\r\n"
    b"CSeq: 8 REGISTER\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\r\n"
    b"Content-Length: 0\r\n\r\n"
    b"INVITE sip:joe@example.com SIP/2.0\r\n"
    b"t: sip:joe@example.com\r\n"
    b"From: sip:caller@example.net;tag=141334\r\n"
    b"Max-Forwards: 8\r\n"
    b"Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\r\n"
    b"CSeq: 8 INVITE\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 150\r\n\r\n" + SDP
)

SEMIURI = (
    b"OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\r\n"
    b"To: sip:j_user@example.com\r\n"
    b"From: sip:caller@example.org;tag=33242\r\n"
    b"Max-Forwards: 3\r\n"
    b"Call-ID: semiuri.0ha0isndaksdj\r\n"
    b"CSeq: 8 OPTIONS\r\n"
    b"Accept: application/sdp, application/pkcs7-mime,\r\n"
    b"        multipart/mixed, multipart/signed,\r\n"
    b"        message/sip, message/sipfrag\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\r\n"
    b"l: 0\r\n\r\n"
)

TRANSPORTS = (
    b"OPTIONS sip:user@example.com SIP/2.0\r\n"
    b"To: sip:user@example.com\r\n"
    b"From: <sip:caller@example.com>;tag=323\r\n"
    b"Max-Forwards: 70\r\n"
    b"Call-ID:  transports.kijh4akdnaqjkwendsasfdj\r\n"
    b"Accept: application/sdp\r\n"
    b"CSeq: 60 OPTIONS\r\n"
    b"Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\r\n"
    b"Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\r\n"
    b"Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\r\n"
    b"Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\r\n"
    b"Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\r\n"
    b"l: 0\r\n\r\n"
)

MPART01_BODY = (
    b"--===-=-=\r\n"
    b"Content-Type: application/sdp\r\n\r\n" + SDP + b"\r\n"
    b"--===-=-=--\r\n"
)
MPART01 = (
    b"MESSAGE sip:kumiko@example.org SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK283\r\n"
    b"Max-Forwards: 7\r\n"
    b"To: <sip:kumiko@example.org>\r\n"
    b"From: <sip:edith@example.com>;tag=5\r\n"
    b"Call-ID: mpart01.asdf\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b'Content-Type: multipart/mixed;boundary="===-=-="\r\n'
    b"Content-Length: %d\r\n\r\n" % len(MPART01_BODY) + MPART01_BODY
)

UNREASON = (
    b"SIP/2.0 200 = 2**3 * 5**2 \xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe"
    b" \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe"
    b" \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd1\x82\xd1\x8c - \xd0\xbf\xd1\x80\xd0\xbe\xd1\x81\xd1"
    b"\x82\xd0\xbe\xd0\xb5\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n"
    b"Call-ID: unreason.1234ksdfak3j2erwedfsASdf\r\n"
    b"CSeq: 35 INVITE\r\n"
    b"From: sip:user@example.com;tag=11141343\r\n"
    b"To: sip:user@example.edu;tag=2229\r\n"
    b"Content-Length: 150\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Contact: <sip:user@host198.example.com>\r\n\r\n" + SDP
)

NOREASON = (
    b"SIP/2.0 100 \r\n"
    b"Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n"
    b"Call-ID: noreason.asndj203insdf99223ndf\r\n"
    b"CSeq: 35 INVITE\r\n"
    b"From: <sip:user@example.com>;tag=39ansfi3\r\n"
    b"To: <sip:user@example.edu>;tag=902jndnke3\r\n"
    b"Content-Length: 0\r\n"
    b"Contact: <sip:user@host105.example.com>\r\n\r\n"
)

BADINV01 = (
    b"INVITE sip:user@example.com SIP/2.0\r\n"
    b"To: sip:j.user@example.com\r\n"
    b"From: sip:caller@example.net;tag=134161461246\r\n"
    b"Max-Forwards: 7\r\n"
    b"Call-ID: badinv01.0ha0isndaksdjasdf3234nas\r\n"
    b"CSeq: 8 INVITE\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n"
    b'Contact: "Joe" <sip:joe@example.org>;;;;\r\n'
    b"Content-Length: 150\r\n"
    b"Content-Type: application/sdp\r\n\r\n" + SDP
)

CLERR = (
    b"INVITE sip:user@example.com SIP/2.0\r\n"
    b"Max-Forwards: 80\r\n"
    b"To: sip:j.user@example.com\r\n"
    b"From: sip:caller@example.net;tag=93942939o2\r\n"
    b"Contact: <sip:caller@hungry.example.net>\r\n"
    b"Call-ID: clerr.0ha0isndaksdjweiafasdk3\r\n"
    b"CSeq: 8 INVITE\r\n"
    b"Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 9999\r\n\r\n" + SDP
)

NCL = (
    b"INVITE sip:user@example.com SIP/2.0\r\n"
    b"Max-Forwards: 254\r\n"
    b"To: sip:j.user@example.com\r\n"
    b"From: sip:caller@example.net;tag=32394234\r\n"
    b"Call-ID: ncl.0ha0isndaksdj2193423r542w35\r\n"
    b"CSeq: 0 INVITE\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\r\n"
    b"Contact: <sip:caller@example53.example.net>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: -999\r\n\r\n" + SDP
)

SCALAR02 = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\r\n"
    b"To: <sip:user@example.com>\r\n"
    b"From: <sip:user@example.com>;tag=239232jh3\r\n"
    b"CSeq: 36893488147419103232 REGISTER\r\n"
    b"Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\r\n"
    b"Max-Forwards: 300\r\n"
    b"Expires: 1<repeat count=100>0\r\n"
    b"Contact: <sip:user@host129.example.com>;expires=280297596632815\r\n"
    b"Content-Length: 0\r\n\r\n"
)

SCALARLG = (
    b"SIP/2.0 503 Service Unavailable\r\n"
    b"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\r\n"
    b"To: <sip:user@example.com>\r\n"
    b"From: <sip:other@example.net>;tag=2easdjfejw\r\n"
    b"CSeq: 9292394834772304023312 OPTIONS\r\n"
    b"Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\r\n"
    b"Retry-After: 949302838503028349304023988\r\n"
    b"Warning: 1812 overture \"In Progress\"\r\n"
    b"Content-Length: 0\r\n\r\n"
)

QUOTBAL = (
    b"INVITE sip:user@example.com SIP/2.0\r\n"
    b'To: "Mr. J. User <sip:j.user@example.com>\r\n'
    b'From: sip:caller@example.net;tag=93334\r\n'
    b"Max-Forwards: 10\r\n"
    b"Call-ID: quotbal.aksdj\r\n"
    b"Contact: <sip:caller@host59.example.net>\r\n"
    b"CSeq: 8 INVITE\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 150\r\n\r\n" + SDP
)


def _options(start: bytes, *extra: bytes, cseq: bytes = b"CSeq: 1 OPTIONS") -> bytes:
    """An otherwise valid OPTIONS with the given start line and extra header lines."""
    return (
        start + b"\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKopt\r\n"
        b"To: <sip:user@example.com>\r\n"
        b"From: <sip:caller@example.com>;tag=opt1\r\n"
        b"Call-ID: options.1@192.0.2.1\r\n"
        + cseq + b"\r\n"
        b"Max-Forwards: 70\r\n"
        + b"".join(line + b"\r\n" for line in extra)
        + b"Content-Length: 0\r\n\r\n"
    )


BIG_BODY = b"x" * (MAX_MESSAGE_SIZE + 10)

CASES: list[tuple[str, bytes, Parses | Rejects]] = [
    # RFC 4475 §3.1.1: valid messages.
    ("wsinv", WSINV, Parses(
        method="INVITE",
        uri="sip:vivekg@chair-dnrc.example.com;unknownparam",
        headers={
            "Max-Forwards": "0068",
            "CSeq": "0009 INVITE",
            "Subject": "",
            "NewFangledHeader": "newfangled value continued newfangled value",
            "UnknownHeaderWithUnusualValue": ";;,,;;,;",
        },
        body=SDP,
        check=_wsinv_fields,
    )),
    ("intmeth-with-quoted-nul", INTMETH, Rejects(400, "NUL byte", True)),
    ("intmeth", INTMETH.replace(b" NUL:\\\x00", b""), Parses(
        method="!interesting-Method0123456789_*+`.%indeed'~",
        headers={"Call-ID": "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
                 "Extensionheader-!.%*+_`'~": "\ufeff大停電"},
        check=lambda m: parse_name_addr(m.headers.get("From") or "").tag == "_token~1'+`*%!-.",
    )),
    ("esc01", ESC01, Parses(
        method="INVITE", uri="sip:sips%3Auser%40example.com@example.net",
        headers={"Content-Type": "application/sdp",
                 "Call-ID": "esc01.239409asdfakjkn23onasd0-3234"},
        body=SDP,
    )),
    ("escnull", ESCNULL, Parses(method="REGISTER", headers={"Content-Length": "0"}, body=b"")),
    ("esc02", ESC02, Parses(
        method="RE%47IST%45R",
        headers={"Contact": ["<sip:alias1@host1.example.com>", "<sip:alias3@host3.example.com>"],
                 "C%6fntact": "<sip:alias2@host2.example.com>"},
    )),
    ("lwsdisp", LWSDISP, Parses(
        method="OPTIONS",
        check=lambda m: parse_name_addr(m.headers.get("From") or "").display_name == "caller",
    )),
    ("longreq", LONGREQ, Parses(
        method="INVITE", body=SDP,
        check=lambda m: len(header_values(m.headers, "Via")) == 100,
    )),
    ("dblreq", DBLREQ, Parses(method="REGISTER", body=b"")),
    ("semiuri", SEMIURI, Parses(
        method="OPTIONS", uri="sip:user;par=u%40example.net@example.com",
        headers={"Accept": "application/sdp, application/pkcs7-mime, multipart/mixed, "
                           "multipart/signed, message/sip, message/sipfrag"},
    )),
    ("transports", TRANSPORTS, Parses(
        method="OPTIONS",
        check=lambda m: [parse_via(v).transport for v in header_values(m.headers, "Via")]
        == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"],
    )),
    ("mpart01", MPART01, Parses(method="MESSAGE", body=MPART01_BODY)),
    ("unreason", UNREASON, Parses(
        status=200, reason="= 2**3 * 5**2 но сто девяносто девять - простое", body=SDP,
    )),
    ("noreason", NOREASON, Parses(status=100, reason="")),
    # RFC 4475 §3.1.2: invalid messages.
    ("badinv01", BADINV01, Rejects(400, "malformed Via", True)),
    ("clerr", CLERR, Rejects(400, "Content-Length 9999 exceeds the 150 bytes of body", True)),
    ("ncl", NCL, Rejects(400, "bad Content-Length", True)),
    ("scalar02", SCALAR02, Rejects(400, "malformed CSeq", True)),
    ("scalar02-max-forwards", SCALAR02.replace(b"36893488147419103232", b"1"),
     Rejects(400, "malformed Max-Forwards", True)),
    ("scalarlg", SCALARLG, Rejects(400, "malformed CSeq", False)),
    ("quotbal", QUOTBAL, Rejects(400, "malformed To: unterminated quoted string", True)),
    ("ltgtruri", _options(b"OPTIONS <sip:user@example.com> SIP/2.0"),
     Rejects(400, "is not an absolute URI", True)),
    ("lwsruri", _options(b"OPTIONS sip:user@example.com; lr SIP/2.0"),
     Rejects(400, "Request-Line is not", True)),
    ("lwsstart", _options(b"OPTIONS  sip:user@example.com   SIP/2.0"),
     Rejects(400, "Request-Line is not", True)),
    ("trws", _options(b"OPTIONS sip:user@example.com SIP/2.0  "),
     Rejects(400, "Request-Line is not", True)),
    ("escruri", _options(b"OPTIONS sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0"),
     Rejects(400, "URI headers are not allowed", True)),
    ("baddate", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                         b"Date: Fri, 01 Jan 2010 16:00:00 EST"),
     Parses(method="OPTIONS", headers={"Date": "Fri, 01 Jan 2010 16:00:00 EST"})),
    ("regbadct", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                          b"Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
     Rejects(400, "malformed Contact", True)),
    ("badaspec", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                          b"Reply-To: x").replace(
        b"To: <sip:user@example.com>", b'To: "Watson, Thomas" < sip:t.watson@example.org >'),
     Parses(method="OPTIONS", check=lambda m: parse_name_addr(m.headers.get("To") or "")
            == NameAddr("Watson, Thomas", "sip:t.watson@example.org", {}))),
    ("baddn", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"From: <sip:caller@example.com>;tag=opt1",
        b"From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
     Rejects(400, "malformed From", True)),
    ("badvers", _options(b"OPTIONS sip:t.watson@example.org SIP/7.0"),
     Rejects(505, "SIP/7.0", True)),
    ("badvers-and-bad-cseq", _options(b"OPTIONS sip:t.watson@example.org SIP/7.0",
                                      cseq=b"CSeq: x OPTIONS"),
     Rejects(505, "SIP/7.0", True)),
    ("mismatch01", _options(b"OPTIONS sip:user@example.com SIP/2.0", cseq=b"CSeq: 1 INVITE"),
     Rejects(400, "does not match request method", True)),
    ("mismatch02", _options(b"NEWMETHOD sip:user@example.com SIP/2.0", cseq=b"CSeq: 1 INVITE"),
     Rejects(400, "does not match request method", True)),
    ("bigcode", b"SIP/2.0 4294967301 better not break the receiver\r\n"
                b"Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n"
                b"Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\r\n"
                b"CSeq: 353494 INVITE\r\n"
                b"From: <sip:user@example.com>;tag=39ansfi3\r\n"
                b"To: <sip:user@example.edu>;tag=902jndnke3\r\n"
                b"Content-Length: 0\r\n\r\n",
     Rejects(400, "malformed Status-Line", False)),
    ("invut", INVITE.replace(b"application/sdp", b"application/unknownformat"),
     Parses(method="INVITE", headers={"Content-Type": "application/unknownformat"}, body=SDP)),
    ("regaut01", _options(b"REGISTER sip:example.com SIP/2.0",
                          b"Authorization: NoOneKnowsThisScheme opaque-data=here",
                          cseq=b"CSeq: 9338 REGISTER"),
     Parses(method="REGISTER", headers={
         "Authorization": "NoOneKnowsThisScheme opaque-data=here"})),
    ("multi01-to", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                            b"To: <sip:other@example.com>"),
     Rejects(400, "duplicate To header", True)),
    ("multi01-call-id", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                                 b"i: second-call-id"),
     Rejects(400, "duplicate Call-ID header", True)),
    ("multi01-cseq", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"CSeq: 2 OPTIONS"),
     Rejects(400, "duplicate CSeq header", True)),
    ("multi01-from-list", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"From: <sip:caller@example.com>;tag=opt1",
        b"From: <sip:caller@example.com>;tag=1, <sip:other@example.com>;tag=2"),
     Rejects(400, "malformed From", True)),
    ("mcl01", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"l: 6"),
     Rejects(400, "duplicate Content-Length header", True)),
    ("duplicate-max-forwards", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                                        b"Max-Forwards: 69"),
     Rejects(400, "duplicate Max-Forwards header", True)),
    ("duplicate-content-type", INVITE.replace(b"Content-Length: 150",
                                              b"c: text/plain\r\nContent-Length: 150"),
     Rejects(400, "duplicate Content-Type header", True)),
    ("bcast", b"SIP/2.0 200 OK\r\n"
              b"Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923;received=255.255.255.255\r\n"
              b"Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\r\n"
              b"CSeq: 35 INVITE\r\n"
              b"From: sip:user@example.com;tag=11141343\r\n"
              b"To: sip:user@example.edu;tag=2229\r\n"
              b"Content-Length: 0\r\n\r\n",
     Parses(status=200, check=lambda m: parse_via(m.headers.get("Via") or "").received
            == "255.255.255.255")),
    ("bext01", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                        b"Require: nothingSupportedHere, noreallyIsaidnothing"),
     Parses(method="OPTIONS",
            headers={"Require": "nothingSupportedHere, noreallyIsaidnothing"})),
    ("cparam01", _options(b"REGISTER sip:example.com SIP/2.0",
                          b"Contact: sip:+19725552222@gw1.example.net;unknownparam",
                          cseq=b"CSeq: 1 REGISTER"),
     Parses(method="REGISTER", check=lambda m: parse_name_addr(m.headers.get("Contact") or "")
            == NameAddr(None, "sip:+19725552222@gw1.example.net", {"unknownparam": None}))),
    ("cparam02", _options(b"REGISTER sip:example.com SIP/2.0",
                          b"Contact: <sip:+19725552222@gw1.example.net;unknownparam>",
                          cseq=b"CSeq: 1 REGISTER"),
     Parses(method="REGISTER", check=lambda m: parse_name_addr(m.headers.get("Contact") or "")
            == NameAddr(None, "sip:+19725552222@gw1.example.net;unknownparam", {}))),
    ("contact-star", _options(b"REGISTER sip:example.com SIP/2.0", b"Contact: *",
                              cseq=b"CSeq: 1 REGISTER"),
     Parses(method="REGISTER", headers={"Contact": "*"})),
    ("insuf", b"INVITE sip:user@example.com SIP/2.0\r\n"
              b"CSeq: 193942 INVITE\r\n"
              b"Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n"
              b"Content-Type: application/sdp\r\n"
              b"l: 150\r\n\r\n" + SDP,
     Rejects(400, "missing From header", True)),
    ("missing-via", INVITE.replace(b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;"
                                   b"rport\r\nVia: SIP/2.0/TCP proxy.example.com;branch="
                                   b"z9hG4bK1\r\n", b""),
     Rejects(400, "missing Via header", True)),
    ("inv2543", b"INVITE sip:UserB@example.com SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP iftgw.example.com\r\n"
                b"From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n"
                b"Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\r\n"
                b"To: sip:+16505552222@ss1.example.net;user=phone\r\n"
                b"Call-ID: inv2543.1717@ift.client.example.com\r\n"
                b"CSeq: 56 INVITE\r\n"
                b"Content-Type: application/sdp\r\n\r\n" + SDP,
     Parses(method="INVITE", body=SDP,
            check=lambda m: "Max-Forwards" not in m.headers
            and parse_via(m.headers.get("Via") or "").branch is None)),
    ("unkscm", _options(b"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0"),
     Parses(method="OPTIONS", uri="nobodyKnowsThisScheme:totallyopaquecontent")),
    ("novelsc", _options(b"OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0"),
     Parses(method="OPTIONS", uri="soap.beep://192.0.2.103:3002")),
    ("unksm2", _options(b"REGISTER sip:example.com SIP/2.0", cseq=b"CSeq: 1 REGISTER").replace(
        b"To: <sip:user@example.com>", b"To: isbn:2983792873"),
     Parses(method="REGISTER", headers={"To": "isbn:2983792873"})),
    ("zeromf", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0"),
     Parses(method="OPTIONS", headers={"Max-Forwards": "0"})),
    ("sdp01", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"Accept: text/nobodyKnowsThis"),
     Parses(method="OPTIONS", headers={"Accept": "text/nobodyKnowsThis"})),
    # Content-Length and size.
    ("content-length-huge", INVITE.replace(b"Content-Length: 150",
                                           b"Content-Length: 99999999999999999999999"),
     Rejects(400, "bad Content-Length", True)),
    ("content-length-garbage", INVITE.replace(b"Content-Length: 150", b"l: 15O"),
     Rejects(400, "bad Content-Length", True)),
    ("content-length-unicode-digits", INVITE.replace(b"Content-Length: 150",
                                                     "l: \u0661\u0665\u0660".encode()),
     Rejects(400, "bad Content-Length", True)),
    ("content-length-underscore", INVITE.replace(b"Content-Length: 150", b"l: 1_50"),
     Rejects(400, "bad Content-Length", True)),
    ("content-length-shorter", INVITE.replace(b"Content-Length: 150", b"l: 00003"),
     Parses(method="INVITE", body=b"v=0")),
    ("oversized-datagram", INVITE.replace(b"Content-Length: 150",
                                          b"Content-Length: %d" % len(BIG_BODY)).replace(
        SDP, BIG_BODY), Rejects(413, "exceeds 65536 bytes", True)),
    ("oversized-header-section",
     b"OPTIONS sip:u@example.com SIP/2.0\r\nX-Pad: " + b"a" * MAX_MESSAGE_SIZE + b"\r\n\r\n",
     Rejects(513, "header section exceeds", False)),
    # Numbers.
    ("cseq-max", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                          cseq=b"CSeq: 2147483647 OPTIONS"),
     Parses(method="OPTIONS", headers={"CSeq": "2147483647 OPTIONS"})),
    ("cseq-2-31", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                           cseq=b"CSeq: 2147483648 OPTIONS"),
     Rejects(400, "malformed CSeq", True)),
    ("cseq-negative", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                               cseq=b"CSeq: -1 OPTIONS"),
     Rejects(400, "malformed CSeq", True)),
    ("cseq-no-method", _options(b"OPTIONS sip:user@example.com SIP/2.0", cseq=b"CSeq: 1"),
     Rejects(400, "malformed CSeq", True)),
    ("max-forwards-256", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 256"),
     Rejects(400, "malformed Max-Forwards", True)),
    ("status-099", NOREASON.replace(b"SIP/2.0 100 ", b"SIP/2.0 099 Early"),
     Rejects(400, "out of range", False)),
    ("response-bad-version", NOREASON.replace(b"SIP/2.0 100 ", b"SIP/3.0 100 Trying"),
     Rejects(505, "SIP/3.0", False)),
    # Headers, whitespace and encoding.
    ("nul-in-header", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"Subject: a\x00b"),
     Rejects(400, "NUL byte in header section", True)),
    ("nul-in-start-line", _options(b"OPTIONS sip:user@exa\x00mple.com SIP/2.0"),
     Rejects(400, "NUL or stray CR in start line", False)),
    ("invalid-utf8-in-value", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                                       b"Subject: caf\xe9 \xff\xfe"),
     Parses(method="OPTIONS", headers={"Subject": "caf\udce9 \udcff\udcfe"})),
    ("invalid-utf8-in-name", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"X-\xff: 1"),
     Rejects(400, "malformed header line", True)),
    ("header-without-colon", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"Subject"),
     Rejects(400, "malformed header line", True)),
    ("space-in-header-name", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"X Pad: 1"),
     Rejects(400, "malformed header line", True)),
    ("stray-cr", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"Subject: a\rb"),
     Rejects(400, "stray CR", True)),
    ("continuation-first", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"SIP/2.0\r\n", b"SIP/2.0\r\n  folded\r\n", 1),
     Rejects(400, "continuation line before the first header", True)),
    ("tab-folding", _options(b"OPTIONS sip:user@example.com SIP/2.0", b"Subject: a\r\n\t b"),
     Parses(method="OPTIONS", headers={"Subject": "a b"})),
    ("lf-only", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(b"\r\n", b"\n"),
     Parses(method="OPTIONS", headers={"Call-ID": "options.1@192.0.2.1"})),
    ("missing-final-empty-line", _options(b"OPTIONS sip:user@example.com SIP/2.0")[:-2],
     Parses(method="OPTIONS", body=b"")),
    ("truncated", _options(b"OPTIONS sip:user@example.com SIP/2.0")[:60],
     Rejects(400, "no empty line", False)),
    ("lower-case-version", _options(b"OPTIONS sip:user@example.com sip/2.0"),
     Parses(method="OPTIONS")),
    ("lower-case-method", _options(b"options sip:user@example.com SIP/2.0",
                                   cseq=b"CSeq: 1 options"),
     Parses(method="options")),
    ("method-not-token", _options(b"OPT@ONS sip:user@example.com SIP/2.0"),
     Rejects(400, "malformed Request-Line", False)),
    ("empty-call-id", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"Call-ID: options.1@192.0.2.1", b"Call-ID:"),
     Rejects(400, "Call-ID is empty", True)),
    ("via-without-host", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKopt", b"Via: SIP/2.0/UDP"),
     Rejects(400, "malformed Via", True)),
    ("via-port-too-big", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"192.0.2.1;branch", b"192.0.2.1:70000;branch"),
     Rejects(400, "malformed Via", True)),
    ("via-ipv6", _options(b"OPTIONS sip:user@example.com SIP/2.0").replace(
        b"192.0.2.1;branch", b"[2001:db8::9:1]:5070;branch"),
     Parses(method="OPTIONS", check=lambda m: (parse_via(m.headers.get("Via") or "").host,
                                               parse_via(m.headers.get("Via") or "").port)
            == ("2001:db8::9:1", 5070))),
    ("unterminated-quote-contact", _options(b"OPTIONS sip:user@example.com SIP/2.0",
                                            b'Contact: "Bob <sip:bob@example.com>'),
     Rejects(400, "malformed Contact", True)),
    ("bad-uri-empty-host", _options(b"OPTIONS sip:user@ SIP/2.0"),
     Rejects(400, "bad Request-URI", True)),
    ("bad-uri-ipv6", _options(b"OPTIONS sip:user@[::zz] SIP/2.0"),
     Rejects(400, "bad Request-URI", True)),
    ("bad-uri-escape", _options(b"OPTIONS sip:us%4ger@example.com SIP/2.0"),
     Rejects(400, "bad Request-URI", True)),
    ("escaped-ruri", _options(b"OPTIONS sip:%31%30%30%34@example.com SIP/2.0"),
     Parses(method="OPTIONS", uri="sip:%31%30%30%34@example.com")),
    ("tel-ruri", _options(b"OPTIONS tel:+1-201-555-0123 SIP/2.0"),
     Parses(method="OPTIONS", uri="tel:+1-201-555-0123")),
    ("compact-forms", b"OPTIONS sip:user@example.com SIP/2.0\r\n"
                      b"v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc\r\n"
                      b"t: <sip:user@example.com>\r\nf: <sip:c@example.com>;tag=c\r\n"
                      b"i: compact\r\nCSeq: 1 OPTIONS\r\nm: <sip:c@192.0.2.1>\r\n"
                      b"k: timer\r\ns: hi\r\nl: 0\r\n\r\n",
     Parses(method="OPTIONS", headers={"Via": "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc",
                                       "Contact": "<sip:c@192.0.2.1>", "Supported": "timer",
                                       "Subject": "hi", "Content-Length": "0"})),
    # Not SIP at all.
    ("empty", b"", Rejects(400, "empty message", False)),
    ("only-crlf", b"\r\n\r\n\r\n", Rejects(400, "empty message", False)),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
     Rejects(400, "no empty line", False)),
    ("garbage-line", b"hello world\r\n\r\n", Rejects(400, "malformed Request-Line", False)),
    ("http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
     Rejects(400, "malformed Request-Line", False)),
    ("only-start-line", b"OPTIONS sip:user@example.com SIP/2.0\r\n\r\n",
     Rejects(400, "missing Via header", True)),
]


def test_torture_table_is_big_enough() -> None:
    assert len(CASES) >= 45
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_torture(name: str, data: bytes, expected: Parses | Rejects) -> None:
    if isinstance(expected, Rejects):
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        error = info.value
        assert error.status == expected.status, error.reason
        assert expected.says in error.reason
        assert (error.request is not None) == expected.request
        assert "\r" not in error.reason and "\n" not in error.reason
        return
    msg = parse_message(data)
    if expected.method is not None:
        assert isinstance(msg, Request)
        assert msg.method == expected.method
    if expected.uri is not None:
        assert isinstance(msg, Request)
        assert msg.uri == expected.uri
    if expected.status is not None:
        assert isinstance(msg, Response)
        assert msg.status == expected.status
    if expected.reason is not None:
        assert isinstance(msg, Response)
        assert msg.reason == expected.reason
    for header, value in expected.headers.items():
        if isinstance(value, list):
            assert msg.headers.get_all(header) == value
        else:
            assert msg.headers.get(header) == value
    if expected.body is not None:
        assert msg.body == expected.body
    if expected.check is not None:
        assert expected.check(msg) is not False
    reparsed = parse_message(serialize(msg))
    assert reparsed.body == msg.body
    assert [(n, v) for n, v in reparsed.headers if n != "Content-Length"] == [
        (n, v) for n, v in msg.headers if n != "Content-Length"
    ]


def test_error_reason_is_ascii_and_single_line() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(_options(b"OPTIONS sip:user@example.com SIP/2.0", b"X-\xff\xfe\n: 1"))
    assert info.value.reason.isascii()
    assert str(info.value).startswith("400 Bad Request - ")


# ---------------------------------------------------------------------------------------------
# Field helpers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a, b", ["a", "b"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y;a=1,2>', ['"Doe, John" <sip:j@x>', "<sip:k@y;a=1,2>"]),
        ('"say \\"hi, there\\"" <sip:a@b>, sip:c@d', ['"say \\"hi, there\\"" <sip:a@b>',
                                                      "sip:c@d"]),
        (" , a ,, ", ["a"]),
        ("", []),
        ('"unterminated, still one', ['"unterminated, still one']),
    ],
)
def test_split_header_values(value: str, expected: list[str]) -> None:
    assert split_header_values(value) == expected


def test_parse_via_fields_and_format() -> None:
    via = parse_via("SIP/2.0/udp 192.0.2.10:5060;branch=z9hG4bK776;rport;received=192.0.2.99")
    assert via == Via("UDP", "192.0.2.10", 5060,
                      {"branch": "z9hG4bK776", "rport": None, "received": "192.0.2.99"})
    assert via.rport_requested and via.rport is None
    assert via.received == "192.0.2.99"
    assert format_via(via) == (
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776;rport;received=192.0.2.99"
    )
    filled = parse_via("SIP/2.0/TCP [2001:db8::1];rport=5061")
    assert (filled.host, filled.port, filled.rport, filled.sent_by) == (
        "2001:db8::1", None, 5061, "[2001:db8::1]")


@pytest.mark.parametrize(
    "value",
    ["", "SIP/2.0/UDP", "SIP/2.0 host", "SIP/2.0/UDP host;;", "SIP/2.0/UDP host:99999",
     "SIP/2.0/UDP host;branch=", "SIP/2.0/UDP host junk", "SIP/2.0/UDP ho st"],
)
def test_parse_via_rejects(value: str) -> None:
    with pytest.raises(InvalidHeader):
        parse_via(value)


def test_parse_cseq() -> None:
    assert parse_cseq("0009  INVITE") == (9, "INVITE")
    for bad in ("1", "x INVITE", "1 INVITE extra", "4294967296 BYE", "1 IN@VITE"):
        with pytest.raises(InvalidHeader):
            parse_cseq(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sip:1004@domain", NameAddr(None, "sip:1004@domain", {})),
        ("<sip:1004@domain>", NameAddr(None, "sip:1004@domain", {})),
        ("sip:1004@domain;tag=abc", NameAddr(None, "sip:1004@domain", {"tag": "abc"})),
        ('"Alice" <sip:1004@pbx.example.com;user=phone>;tag=x',
         NameAddr("Alice", "sip:1004@pbx.example.com;user=phone", {"tag": "x"})),
        ('"A \\"quoted\\" \\\\ name" <sip:a@b>', NameAddr('A "quoted" \\ name', "sip:a@b", {})),
        ("Bob Smith <sip:bob@b>;TAG=9", NameAddr("Bob Smith", "sip:bob@b", {"tag": "9"})),
        ('""<sip:a@b>', NameAddr("", "sip:a@b", {})),
        ("<tel:+1234>;x=\"a;b\"", NameAddr(None, "tel:+1234", {"x": '"a;b"'})),
    ],
)
def test_parse_name_addr(value: str, expected: NameAddr) -> None:
    assert parse_name_addr(value) == expected


@pytest.mark.parametrize(
    "value",
    ['"unterminated <sip:a@b>', "<sip:a@b", "Doe, John <sip:a@b>", "nouri", '"x" sip:a@b',
     "<sip:a@b> junk", "sip:a@b?x=1", "<>", "<sip:a@b>;", "sip:a@b;;tag=1"],
)
def test_parse_name_addr_rejects(value: str) -> None:
    with pytest.raises(InvalidHeader):
        parse_name_addr(value)


def test_format_name_addr_round_trips() -> None:
    addr = NameAddr('Say "hi" \\o/', "sip:1004@pbx", {"tag": "1", "lr": None})
    text = format_name_addr(addr)
    assert text == '"Say \\"hi\\" \\\\o/" <sip:1004@pbx>;tag=1;lr'
    assert parse_name_addr(text) == addr


# ---------------------------------------------------------------------------------------------
# make_response


def test_make_response_copies_dialog_headers_and_adds_tag() -> None:
    request = _request(INVITE)
    response = make_response(request, 200, "OK", to_tag="as7f", body=b"v=0\r\n",
                             content_type="application/sdp",
                             headers=[("Contact", "<sip:bot@192.0.2.1>")])
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.headers.get("From") == request.headers.get("From")
    assert response.headers.get("To") == "<sip:1004@pbx.example.com>;tag=as7f"
    assert response.headers.get("Call-ID") == request.headers.get("Call-ID")
    assert response.headers.get("CSeq") == "314159 INVITE"
    assert response.headers.get("Record-Route") == "<sip:proxy.example.com;lr>"
    assert response.headers.get("Contact") == "<sip:bot@192.0.2.1>"
    assert response.headers.get("Content-Type") == "application/sdp"
    wire = serialize(response)
    assert wire.startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;")
    assert b"Content-Length: 5\r\n" in wire


def test_make_response_never_tags_100_and_keeps_existing_tag() -> None:
    request = _request(INVITE)
    trying = make_response(request, 100, "Trying", to_tag="x")
    assert trying.headers.get("To") == "<sip:1004@pbx.example.com>"
    assert "Record-Route" not in trying.headers
    request.headers.set("To", "<sip:1004@pbx.example.com>;tag=old")
    assert make_response(request, 486, "Busy Here", to_tag="new").headers.get("To") == (
        "<sip:1004@pbx.example.com>;tag=old"
    )


def test_make_response_from_partial_request_of_parse_error() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(CLERR)
    request = info.value.request
    assert request is not None
    response = make_response(request, info.value.status, info.value.reason, to_tag="t1")
    parsed = parse_message(serialize(response))
    assert isinstance(parsed, Response)
    assert parsed.status == 400
    assert parsed.reason.startswith("Bad Request - Content-Length 9999")
    assert parsed.headers.get("To") == "sip:j.user@example.com;tag=t1"
    assert parsed.headers.get("CSeq") == "8 INVITE"


# ---------------------------------------------------------------------------------------------
# StreamFramer


def test_framer_splits_messages_and_handles_partial_input() -> None:
    options = _options(b"OPTIONS sip:user@example.com SIP/2.0")
    stream = b"\r\n\r\n" + INVITE + b"\r\n" + options + INVITE
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out.extend(framer.feed(stream[i:i + 7]))
    assert out == [INVITE, options, INVITE]
    assert [parse_message(m, datagram=False).headers.get("CSeq") for m in out] == [
        "314159 INVITE", "1 OPTIONS", "314159 INVITE"]


def test_framer_returns_several_messages_from_one_chunk() -> None:
    framer = StreamFramer()
    assert framer.feed(INVITE * 3) == [INVITE] * 3
    assert framer.feed(b"") == []


def test_framer_without_content_length_frames_zero_body() -> None:
    message = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\n\r\n"
    assert StreamFramer().feed(message + message) == [message, message]


def test_framer_keep_alive_only() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * MAX_MESSAGE_SIZE, 513),
    ],
)
def test_framer_rejects_unframeable_input(head: bytes, status: int) -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError) as info:
        framer.feed(head)
    assert info.value.status == status
    with pytest.raises(SipParseError):
        framer.feed(INVITE)  # the stream stays broken


def test_framer_delivers_messages_before_an_error_then_raises() -> None:
    framer = StreamFramer()
    bad = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: nope\r\n\r\n"
    assert framer.feed(INVITE + bad) == [INVITE]
    with pytest.raises(SipParseError):
        framer.feed(b"")
