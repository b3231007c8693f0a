"""Request checks before processing: 501, 405, 416, 483, 420, 415."""

from __future__ import annotations

import pytest

from voicedashd.sip.fields import parse_name_addr
from voicedashd.sip.message import Headers, Request
from voicedashd.sip.parser import parse_message, serialize
from voicedashd.sip.validate import ALLOWED_METHODS, check_request


def request(
    method: str = "INVITE",
    uri: str = "sip:1004@pbx.example.com",
    *extra: tuple[str, str],
    body: bytes = b"",
    max_forwards: str = "70",
) -> Request:
    """A well-formed request with the given method, Request-URI, extra headers and body."""
    headers = Headers.of([
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKv1"),
        ("Via", "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKv0"),
        ("From", "<sip:alice@example.com>;tag=a1"),
        ("To", "<sip:1004@pbx.example.com>"),
        ("Call-ID", "validate-1"),
        ("CSeq", f"7 {method}"),
        ("Max-Forwards", max_forwards),
        *extra,
    ])
    return Request(method, uri, headers, body)


SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    "req",
    [
        request("INVITE"),
        request("INVITE", "sip:1004@pbx", ("Content-Type", "application/sdp"), body=SDP),
        request("INVITE", "sip:1004@pbx", ("Content-Type", "Application/SDP; charset=utf-8"),
                body=SDP),
        request("BYE"),
        request("CANCEL"),
        request("OPTIONS", "sip:pbx", max_forwards="0"),
        request("INVITE", "sips:1004@pbx"),
        request("INVITE", "tel:1004"),
        request("INVITE", "sip:1004@pbx", ("Supported", "timer, 100rel")),
        request("CANCEL", "sip:1004@pbx", ("Require", "100rel")),
        request("BYE", "sip:1004@pbx", ("Content-Type", "text/plain"), body=b"x"),
    ],
)
def test_acceptable_requests(req: Request) -> None:
    assert check_request(req) is None


@pytest.mark.parametrize(
    "req",
    [
        request("ACK", "mailto:x@y", ("Require", "foo"), max_forwards="0"),
        request("ACK", "sip:1004@pbx", ("Content-Type", "text/plain"), body=b"x"),
    ],
)
def test_ack_never_gets_a_response(req: Request) -> None:
    assert check_request(req) is None


@pytest.mark.parametrize("method", ["FOO", "invite", "!interesting-Method0123456789_*+`.%indeed'~"])
def test_unknown_method_is_501_with_allow(method: str) -> None:
    response = check_request(request(method), to_tag="t")
    assert response is not None
    assert (response.status, response.reason) == (501, "Not Implemented")
    assert response.headers.get("Allow") == "INVITE, ACK, BYE, CANCEL, OPTIONS"


@pytest.mark.parametrize(
    "method",
    ["REGISTER", "PRACK", "SUBSCRIBE", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"],
)
def test_known_unsupported_method_is_405_with_allow(method: str) -> None:
    response = check_request(request(method), to_tag="t")
    assert response is not None
    assert (response.status, response.reason) == (405, "Method Not Allowed")
    assert response.headers.get("Allow") == ", ".join(ALLOWED_METHODS)


def test_notify_goes_on_to_its_dialog_without_being_advertised() -> None:
    assert check_request(request("NOTIFY"), to_tag="t") is None  # the dialog answers (481, 200)
    assert "NOTIFY" not in ALLOWED_METHODS


@pytest.mark.parametrize(
    "uri", ["nobodyKnowsThisScheme:totallyopaquecontent", "soap.beep://192.0.2.103:3002",
            "mailto:a@example.com"],
)
def test_unknown_request_uri_scheme_is_416(uri: str) -> None:
    response = check_request(request("OPTIONS", uri), to_tag="t")
    assert response is not None
    assert (response.status, response.reason) == (416, "Unsupported URI Scheme")


def test_malformed_request_uri_is_400() -> None:
    response = check_request(request("INVITE", "sip:user@"), to_tag="t")
    assert response is not None
    assert response.status == 400


@pytest.mark.parametrize("method", ["INVITE", "BYE", "CANCEL"])
def test_max_forwards_zero_is_483_except_for_options(method: str) -> None:
    response = check_request(request(method, max_forwards="0"), to_tag="t")
    assert response is not None
    assert (response.status, response.reason) == (483, "Too Many Hops")
    assert response.headers.get("To") == "<sip:1004@pbx.example.com>;tag=t"


def test_require_with_unknown_options_is_420() -> None:
    req = request("INVITE", "sip:1004@pbx", ("Require", "nothingSupportedHere, 100rel"),
                  ("Require", "100rel"))
    response = check_request(req, to_tag="t")
    assert response is not None
    assert (response.status, response.reason) == (420, "Bad Extension")
    assert response.headers.get("Unsupported") == "nothingSupportedHere, 100rel"


@pytest.mark.parametrize(
    ("extra", "accept"),
    [
        ((("Content-Type", "application/unknownformat"),), ("Accept", "application/sdp")),
        ((("Content-Type", 'multipart/mixed;boundary="x"'),), ("Accept", "application/sdp")),
        ((), ("Accept", "application/sdp")),
        ((("Content-Type", "application/sdp"), ("Content-Encoding", "gzip")),
         ("Accept-Encoding", "identity")),
    ],
)
def test_invite_body_that_is_not_sdp_is_415(
    extra: tuple[tuple[str, str], ...], accept: tuple[str, str]
) -> None:
    response = check_request(request("INVITE", "sip:1004@pbx", *extra, body=SDP), to_tag="t")
    assert response is not None
    assert (response.status, response.reason) == (415, "Unsupported Media Type")
    assert response.headers.get(accept[0]) == accept[1]


def test_error_response_is_a_proper_reply() -> None:
    req = request("REGISTER")
    response = check_request(req)
    assert response is not None
    assert response.headers.get_all("Via") == req.headers.get_all("Via")
    assert response.headers.get("Call-ID") == "validate-1"
    assert response.headers.get("CSeq") == "7 REGISTER"
    tag = parse_name_addr(response.headers.get("To") or "").tag
    assert tag is not None and len(tag) >= 8
    other = check_request(req)
    assert other is not None
    assert parse_name_addr(other.headers.get("To") or "").tag != tag
    assert parse_message(serialize(response)).headers.get("Allow") == ", ".join(ALLOWED_METHODS)


def test_checks_apply_in_rfc_3261_order() -> None:
    # Method first (8.2.1), then URI scheme (8.2.2.1), then Require (8.2.2.3), then content.
    both = request("FOO", "mailto:a@b")
    assert (check_request(both) or pytest.fail()).status == 501
    scheme_and_require = request("INVITE", "mailto:a@b", ("Require", "x"))
    assert (check_request(scheme_and_require) or pytest.fail()).status == 416
    require_and_body = request("INVITE", "sip:a@b", ("Require", "x"), ("Content-Type", "text/x"),
                               body=b"x")
    assert (check_request(require_and_body) or pytest.fail()).status == 420


def test_torture_messages_get_the_rfc_4475_answers() -> None:
    def parsed(raw: bytes) -> Request:
        msg = parse_message(raw)
        assert isinstance(msg, Request)
        return msg

    base = (
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nTo: <sip:j@example.com>\r\n"
        b"From: <sip:c@example.com>;tag=1\r\nCall-ID: t1\r\nMax-Forwards: 70\r\n"
    )
    unkscm = b"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\r\n" + base + (
        b"CSeq: 1 OPTIONS\r\nl: 0\r\n\r\n")
    bext01 = b"OPTIONS sip:user@example.com SIP/2.0\r\n" + base + (
        b"CSeq: 1 OPTIONS\r\nRequire: nothingSupportedHere\r\nl: 0\r\n\r\n")
    invut = b"INVITE sip:user@example.com SIP/2.0\r\n" + base + (
        b"CSeq: 1 INVITE\r\nContent-Type: application/unknownformat\r\nl: 3\r\n\r\nabc")
    intmeth = b"!interesting-Method0123456789_*+`.%indeed'~ sip:u@example.com SIP/2.0\r\n" + (
        base + b"CSeq: 1 !interesting-Method0123456789_*+`.%indeed'~\r\nl: 0\r\n\r\n")
    assert [(check_request(parsed(m)) or pytest.fail()).status
            for m in (unkscm, bext01, invut, intmeth)] == [416, 420, 415, 501]
