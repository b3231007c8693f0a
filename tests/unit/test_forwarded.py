"""Choosing the client's address from the TCP peer and X-Forwarded-For, behind trusted proxies."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from voicedashd.config import ConfigError, parse_config
from voicedashd.forwarded import client_address, parse_address

PROXIES = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
           ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(("peer", "headers", "client"), [
    # No trusted proxy in front: the header is the client's own words and is ignored.
    ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),
    ("127.0.0.2", ["203.0.113.7"], "127.0.0.2"),
    ("::ffff:198.51.100.1", ["203.0.113.7"], "198.51.100.1"),
    # From a trusted proxy: the address the proxy saw.
    ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [" 203.0.113.7 "], "203.0.113.7"),
    ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [], "127.0.0.1"),
    ("127.0.0.1", [""], "127.0.0.1"),
    # A client that writes its own header cannot choose its key: the rightmost untrusted wins.
    ("127.0.0.1", ["203.0.113.9, 198.51.100.1"], "198.51.100.1"),
    ("127.0.0.1", ["203.0.113.9", "198.51.100.1"], "198.51.100.1"),    # two header lines
    ("127.0.0.1", ["127.0.0.1, 198.51.100.1"], "198.51.100.1"),
    # A chain of trusted proxies is skipped from the right.
    ("127.0.0.1", ["203.0.113.9, 198.51.100.1, 10.1.2.3, 10.0.0.1"], "198.51.100.1"),
    ("127.0.0.1", ["198.51.100.1, 10.1.2.3", "10.0.0.1"], "198.51.100.1"),
    # Every hop is a trusted proxy: the leftmost is where the request began.
    ("127.0.0.1", ["10.0.0.7, 10.0.0.1"], "10.0.0.7"),
    # Garbage ends the walk at the nearest trusted hop, never at a string the client chose.
    ("127.0.0.1", ["203.0.113.9, not-an-address"], "127.0.0.1"),
    ("127.0.0.1", ["unknown, 10.0.0.1"], "10.0.0.1"),
    ("127.0.0.1", ["203.0.113.9, 1.2.3.4.5"], "127.0.0.1"),
    ("127.0.0.1", ["203.0.113.7, 198.51.100.1:x"], "127.0.0.1"),
    # Empty list elements are skipped (RFC 9110 §5.6.1).
    ("127.0.0.1", ["203.0.113.7,, "], "203.0.113.7"),
    # Ports and brackets as some proxies write them; IPv6 in canonical form.
    ("127.0.0.1", ["198.51.100.1:4711"], "198.51.100.1"),
    ("127.0.0.1", ["[2001:DB8::1]:4711"], "2001:db8::1"),
    ("127.0.0.1", ["2001:db8:0:0::1"], "2001:db8::1"),
    ("fd00::5", ["2001:db8::1"], "2001:db8::1"),
    ("127.0.0.1", ["::ffff:203.0.113.7"], "203.0.113.7"),
    # A peer that is not an IP address (a Unix socket) is returned as is.
    ("unix:/run/x.sock", ["203.0.113.7"], "unix:/run/x.sock"),
])
def test_client_address(peer: str, headers: list[str], client: str) -> None:
    assert client_address(peer, headers, PROXIES) == client


def test_without_trusted_proxies_the_header_is_never_used() -> None:
    assert client_address("127.0.0.1", ["203.0.113.7"], ()) == "127.0.0.1"


@pytest.mark.parametrize(("text", "address"), [
    ("192.0.2.1", "192.0.2.1"), ("192.0.2.1:80", "192.0.2.1"), ("[::1]", "::1"),
    ("[::1]:80", "::1"), ("::1", "::1"), ("", None), ("[::1", None), ("[::1]x", None),
    ("[::1]:", None), ("192.0.2.1:", None), ("example.com", None), ("192.0.2.256", None),
    ("_hidden", None)])
def test_parse_address(text: str, address: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == address


def test_trusted_proxies_config(tmp_path: Path) -> None:
    def api(extra: str) -> str:
        return "\n".join(["[sip]", 'listen = "127.0.0.1:5070"', "[api]",
                          'listen = "127.0.0.1:8480"', extra, "[hub]",
                          'listen = "127.0.0.1:8481"', "[store]", 'path = "db.sqlite3"',
                          "[[tenants]]", 'name = "acme"'])

    def parse(extra: str) -> object:
        return parse_config(api(extra), path=tmp_path / "v.toml",
                            environ={"VOICEDASHD_JWT_SECRET": "s" * 40}).api.trusted_proxies

    assert parse("") == ()
    assert parse('trusted_proxies = ["10.0.0.5", "fd00::/8"]') == (
        ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/8"))
    for bad, problem in (('trusted_proxies = ["proxy.example"]', "not a CIDR"),
                         ('trusted_proxies = "10.0.0.5"', "list of CIDRs")):
        with pytest.raises(ConfigError) as raised:
            parse(bad)
        assert raised.value.problems[0].startswith("api.trusted_proxies: "), raised.value
        assert problem in raised.value.problems[0]
