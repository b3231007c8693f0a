"""The one SIP field API: tag and branch generators, top Via, CSeq and tag readers."""

from __future__ import annotations

import pytest

from voicedashd.sip.fields import (
    MAGIC_COOKIE,
    InvalidHeader,
    cseq_of,
    new_branch,
    new_tag,
    tag_of,
    top_via,
)
from voicedashd.sip.message import Headers


def test_generated_tags_and_branches_are_fresh_and_branches_carry_the_cookie() -> None:
    tags = {new_tag() for _ in range(100)}
    branches = {new_branch() for _ in range(100)}
    assert len(tags) == len(branches) == 100
    assert all(b.startswith(MAGIC_COOKIE) and len(b) == len(MAGIC_COOKIE) + 16 for b in branches)


def test_top_via_reads_the_first_element_of_the_first_line() -> None:
    headers = Headers.of([("Via", "SIP/2.0/UDP a.example:5070;branch=z9hG4bK1, SIP/2.0/UDP b"),
                          ("Via", "SIP/2.0/TCP c;branch=z9hG4bK3")])
    via = top_via(headers)
    assert (via.host, via.port, via.branch) == ("a.example", 5070, "z9hG4bK1")
    with pytest.raises(InvalidHeader, match="no Via"):
        top_via(Headers())


def test_cseq_of_reads_number_and_method_and_names_the_header_when_bad() -> None:
    assert cseq_of(Headers.of([("CSeq", "007 INVITE")])) == (7, "INVITE")
    for headers in (Headers(), Headers.of([("CSeq", "x INVITE")])):
        with pytest.raises(InvalidHeader, match="CSeq"):
            cseq_of(headers)


@pytest.mark.parametrize(("value", "tag"), [
    ('"Bob" <sip:bob@example.com>;tag=abc', "abc"),
    ("sip:bob@example.com;tag=x1", "x1"),
    ("<sip:bob@example.com;tag=uri-param>", None),  # a URI parameter is not the header's tag
    ("<sip:bob@example.com>", None),
    (None, None),
    ("", None),
    ("<sip:bad uri> ;tag=loose", "loose"),  # unparseable: still read, for stateless replies
])
def test_tag_of(value: str | None, tag: str | None) -> None:
    assert tag_of(value) == tag
