"""Who an INVITE is for: callee extension (Diversion, History-Info, To, Request-URI) and domain."""

from __future__ import annotations

import pytest

from voicedashd.sip.callee import Callee, callee_extension, find_callee, request_domain
from voicedashd.sip.message import Headers, Request
from voicedashd.sip.parser import parse_message


def invite(
    uri: str = "sip:bot@voicedash.example.com",
    to: str | None = "<sip:bot@voicedash.example.com>",
    *extra: tuple[str, str],
) -> Request:
    """An INVITE with the given Request-URI, To and extra headers."""
    headers = Headers.of([
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc"),
        ("From", "<sip:alice@example.com>;tag=1"),
        ("Call-ID", "callee-test"),
        ("CSeq", "1 INVITE"),
    ])
    if to is not None:
        headers.add("To", to)
    for name, value in extra:
        headers.add(name, value)
    return Request("INVITE", uri, headers)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        # The three seed forms of a To header value.
        (invite("sip:x@h", "sip:1004@domain"), "1004"),
        (invite("sip:x@h", "<sip:1004@domain>"), "1004"),
        (invite("sip:x@h", "sip:1004@domain;tag=abc"), "1004"),
        (invite("sip:x@h", '"Alice" <sip:1004@pbx.example.com;user=phone>;tag=x'), "1004"),
        # Escaped characters in the user part.
        (invite("sip:x@h", "<sip:%31%30%30%34@pbx.example.com>"), "1004"),
        (invite("sip:x@h", '"A \\"q\\"" <sips:ext%2D7@pbx>'), "ext-7"),
        # tel: URIs give the number without visual separators.
        (invite("sip:x@h", "<tel:1004;phone-context=pbx.example.com>"), "1004"),
        (invite("sip:x@h", "tel:+1-201-555-0123"), "+12015550123"),
        (invite("sip:x@h", "<sip:+1-201-555-0123;npdi@pbx;user=phone>"), "+12015550123"),
        # Diversion wins over To; its first entry is used (comma separated or separate lines).
        (invite("sip:bot@h", "<sip:bot@h>", ("Diversion", "<sip:1004@pbx>;reason=no-answer")),
         "1004"),
        (invite("sip:bot@h", "<sip:bot@h>",
                ("Diversion", '"Bob" <sip:1004@pbx>;reason=user-busy;counter=1, '
                              "<sip:1000@pbx>;reason=unconditional")), "1004"),
        (invite("sip:bot@h", "<sip:bot@h>",
                ("Diversion", "<sip:2001@pbx>;reason=no-answer"),
                ("Diversion", "<sip:2000@pbx>;reason=unconditional")), "2001"),
        (invite("sip:bot@h", "<sip:bot@h>", ("Diversion", "<tel:+4930123456>;reason=deflection")),
         "+4930123456"),
        # History-Info: the entry with the lowest index, whatever the order on the wire.
        (invite("sip:bot@h", "<sip:bot@h>",
                ("History-Info", "<sip:bot@h>;index=1.1.1, <sip:1004@pbx?Reason=SIP%3Bcause%3D302>"
                                 ";index=1.1"),
                ("History-Info", "<sip:1002@pbx>;index=1")), "1002"),
        (invite("sip:bot@h", "<sip:bot@h>",
                ("History-Info", "<sip:bot@h>;index=1.2, <sip:1003@pbx>;index=1.10, "
                                 "<sip:1007@pbx>;index=1.1")), "1007"),
        (invite("sip:bot@h", "<sip:bot@h>",
                ("History-Info", "<sip:1009@pbx>;index=bogus, <sip:1008@pbx>;index=1.1")), "1008"),
        # Diversion is preferred over History-Info.
        (invite("sip:bot@h", "<sip:bot@h>", ("History-Info", "<sip:1002@pbx>;index=1"),
                ("Diversion", "<sip:1004@pbx>")), "1004"),
        # No user part or unparseable entries fall back to the next source.
        (invite("sip:bot@h", "<sip:bot@h>", ("Diversion", "<sip:pbx.example.com>")), "bot"),
        (invite("sip:bot@h", "<sip:bot@h>", ("Diversion", "Doe, John <sip:1004@pbx>")), "bot"),
        (invite("sip:bot@h", "<sip:bot@h>", ("History-Info", "<mailto:a@b>;index=1")), "bot"),
        (invite("sip:1004@pbx", "<sip:pbx.example.com>"), "1004"),
        (invite("sip:1004@pbx", "<urn:service:sos>"), "1004"),
        (invite("sip:1004@pbx", None), "1004"),
        (invite("tel:1004", "garbage"), "1004"),
        (invite("sip:pbx", "<sip:pbx>"), None),
        (invite("urn:x", "<mailto:a@b>"), None),
    ],
)
def test_callee_extension(request_: Request, expected: str | None) -> None:
    assert callee_extension(request_) == expected


def test_callee_from_parsed_message_with_folded_multiline_diversion() -> None:
    raw = (
        b"INVITE sip:bot@192.0.2.5:5080 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKd1\r\n"
        b'From: "Carol" <sip:+4930555@pbx.example.com>;tag=9\r\n'
        b"To: <sip:bot@192.0.2.5:5080>\r\n"
        b"Diversion: <sip:1004@pbx.example.com>;reason=no-answer;\r\n"
        b" counter=1;privacy=off, <sip:1000@pbx.example.com>;reason=unconditional\r\n"
        b"Call-ID: div-1\r\n"
        b"CSeq: 102 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    request = parse_message(raw)
    assert isinstance(request, Request)
    assert callee_extension(request) == "1004"
    assert request_domain(request) == "pbx.example.com"  # Diversion's, not To's (192.0.2.5)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (invite("sip:bot@other", "<sip:1004@PBX.Example.COM>;tag=1"), "pbx.example.com"),
        (invite("sip:bot@[2001:db8::1]:5060", None), "2001:db8::1"),
        (invite("sip:bot@pbx", '"Unterminated <sip:1004@x>'), "pbx"),
        # A tel: URI names no domain, and the domain never comes from another header.
        (invite("sip:bot@pbx.example.com", "<tel:1004>"), None),
        (invite("tel:1004", "<tel:1004>"), None),
    ],
)
def test_request_domain(request_: Request, expected: str | None) -> None:
    assert request_domain(request_) == expected


# The tenant of a forwarded call: the domain is always that of the URI the extension came
# from, so a call forwarded by acme's 1004 is acme's even when To names globex.
@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (invite("sip:bot@globex.example", "<sip:bot@globex.example>",
                ("Diversion", "<sip:1004@acme.example>;reason=no-answer")),
         Callee("1004", "acme.example", "diversion")),
        (invite("sip:bot@globex.example", "<sip:bot@globex.example>",
                ("History-Info", "<sip:bot@globex.example>;index=1.1, "
                                 "<sip:1004@Acme.Example>;index=1")),
         Callee("1004", "acme.example", "history-info")),
        (invite("sip:bot@globex.example", "<sip:bot@globex.example>",
                ("History-Info", "<sip:1002@globex.example>;index=1"),
                ("Diversion", "<sip:1004@acme.example>")),
         Callee("1004", "acme.example", "diversion")),
        (invite("sip:bot@globex.example", "<sip:bot@globex.example>",
                ("Diversion", "<tel:1004>;reason=deflection")),
         Callee("1004", None, "diversion")),
        # A Diversion without a user is skipped whole: its domain is not used either.
        (invite("sip:bot@globex.example", "<sip:1001@acme.example>",
                ("Diversion", "<sip:globex.example>")),
         Callee("1001", "acme.example", "to")),
        (invite("sip:1001@globex.example", "<sip:acme.example>"),
         Callee("1001", "globex.example", "request-uri")),
        (invite("sip:pbx", "<sip:pbx>"), None),
    ],
)
def test_extension_and_domain_come_from_one_uri(request_: Request,
                                                expected: Callee | None) -> None:
    assert find_callee(request_) == expected
