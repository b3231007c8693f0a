"""sip:, sips: and tel: URI parsing and formatting."""

from __future__ import annotations

import pytest

from voicedashd.sip.uri import (
    InvalidUri,
    SipUri,
    TelUri,
    UnsupportedUriScheme,
    parse_uri,
    user_part,
)


def test_full_sip_uri() -> None:
    uri = parse_uri("sip:alice:secret@atlanta.example.com:5070;transport=TCP;lr?subject=hi&to=x")
    assert uri == SipUri(
        scheme="sip",
        host="atlanta.example.com",
        user="alice",
        password="secret",
        port=5070,
        params={"transport": "TCP", "lr": None},
        headers={"subject": "hi", "to": "x"},
    )
    assert isinstance(uri, SipUri)
    assert uri.transport == "tcp"
    assert uri.lr


def test_host_only_and_sips_scheme_case() -> None:
    uri = parse_uri("SIPS:pbx.example.com")
    assert uri == SipUri("sips", "pbx.example.com")
    assert uri.format() == "sips:pbx.example.com"


def test_ipv6_host_and_port() -> None:
    uri = parse_uri("sip:1004@[2001:db8::10]:5060;user=phone")
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.port, uri.params) == (
        "1004", "2001:db8::10", 5060, {"user": "phone"})
    assert uri.format() == "sip:1004@[2001:db8::10]:5060;user=phone"


def test_escapes_are_decoded_in_user_and_params() -> None:
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert isinstance(uri, SipUri)
    assert uri.user == "sips:user@example.com"
    assert uri.host == "example.net"
    contact = parse_uri("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert isinstance(contact, SipUri)
    assert contact.user == "caller"
    assert contact.params == {"lr": None, "name": "value%41"}


def test_escaped_spaces_and_nul() -> None:
    spaces = parse_uri("sip:I%20have%20spaces@example.net")
    assert isinstance(spaces, SipUri)
    assert spaces.user == "I have spaces"
    assert spaces.format() == "sip:I%20have%20spaces@example.net"
    nul = parse_uri("sip:null-%00-null@example.com")
    assert isinstance(nul, SipUri)
    assert nul.user == "null-\x00-null"


def test_unusual_user_and_password_characters() -> None:
    uri = parse_uri(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
        "(doesn't-it)@example.com"
    )
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"


def test_semicolon_in_user_part() -> None:
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})


def test_format_round_trip() -> None:
    for text in (
        "sip:alice@example.com",
        "sip:alice:pw@example.com:5060;transport=udp;lr",
        "sips:[::1]:5061",
        "sip:bob@example.com?subject=project%20x",
    ):
        assert parse_uri(text).format() == text
        assert str(parse_uri(text)) == text


@pytest.mark.parametrize(
    ("text", "number", "params", "digits"),
    [
        ("tel:+1-201-555-0123", "+1-201-555-0123", {}, "+12015550123"),
        ("tel:1004;phone-context=pbx.example.com", "1004", {"phone-context": "pbx.example.com"},
         "1004"),
        ("TEL:*67#;isub=12", "*67#", {"isub": "12"}, "*67#"),
    ],
)
def test_tel_uri(text: str, number: str, params: dict[str, str], digits: str) -> None:
    uri = parse_uri(text)
    assert uri == TelUri(number, params)
    assert isinstance(uri, TelUri)
    assert uri.digits == digits


def test_tel_uri_helpers() -> None:
    uri = parse_uri("tel:7042;phone-context=example.com")
    assert isinstance(uri, TelUri)
    assert not uri.is_global
    assert uri.phone_context == "example.com"
    assert uri.format() == "tel:7042;phone-context=example.com"


@pytest.mark.parametrize(
    "text",
    [
        "nobodyKnowsThisScheme:totallyopaquecontent",
        "soap.beep://192.0.2.103:3002",
        "isbn:2983792873",
        "mailto:a@example.com",
        "http://example.com/",
    ],
)
def test_unknown_scheme(text: str) -> None:
    with pytest.raises(UnsupportedUriScheme) as info:
        parse_uri(text)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com",
        "<sip:user@example.com>",
        "sip:",
        "sip:user@",
        "sip:@example.com",
        "sip:user@example.com:99999",
        "sip:user@example.com:port",
        "sip:user@[::zz]",
        "sip:user@[::1",
        "sip:us%4ger@example.com",
        "sip:us er@example.com",
        "sip:user@exa mple.com",
        "sip:user@example.com;;lr",
        "sip:user@example.com?subject",
        "sip:us<er@example.com",
        "sip:user@-bad-.example.com;x",
        "tel:",
        "tel:abc-xyz",
        "tel:1234;;x",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidUri):
        parse_uri(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:1004@pbx.example.com", "1004"),
        ("<sip:1004@pbx.example.com>", "1004"),
        ("sips:%31004@pbx", "1004"),
        ("tel:+1-201-555-0123", "+12015550123"),
        ("sip:pbx.example.com", None),
        ("mailto:a@b", None),
        ("garbage", None),
    ],
)
def test_user_part(text: str, expected: str | None) -> None:
    assert user_part(text) == expected
