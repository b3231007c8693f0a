"""Who a call is for: the callee extension and SIP domain of an INVITE (RFC 5806, RFC 7044)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from voicedashd.sip.fields import InvalidHeader, header_values, parse_name_addr
from voicedashd.sip.message import Request
from voicedashd.sip.uri import InvalidUri, TelUri, UnsupportedUriScheme, parse_uri

_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
_INDEX = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})*")


@dataclass(frozen=True, slots=True)
class Callee:
    """Who a call is for: the extension, the domain of the same URI, and which header held it."""

    extension: str
    domain: str | None  # None for a tel: URI, which has no domain
    source: str  # "diversion", "history-info", "to" or "request-uri"


def _uri_callee(uri_text: str, source: str) -> Callee | None:
    """The user (sip/sips) or number (tel) of a URI and its host, or None."""
    try:
        uri = parse_uri(uri_text)
    except (InvalidUri, UnsupportedUriScheme):
        return None
    if isinstance(uri, TelUri):
        return Callee(uri.digits, None, source) if uri.digits else None
    user = uri.user
    if user and (uri.params.get("user") or "").lower() == "phone":
        user = user.split(";", 1)[0].translate(_VISUAL_SEPARATORS)  # a telephone-subscriber
    return Callee(user, uri.host.lower() or None, source) if user else None


def _address_callee(value: str, source: str) -> Callee | None:
    """The callee named by a name-addr/addr-spec header value, or None."""
    try:
        return _uri_callee(parse_name_addr(value).uri, source)
    except InvalidHeader:
        return None


def _first_diversion(request: Request) -> Callee | None:
    """The first (topmost) Diversion entry."""
    entries = header_values(request.headers, "Diversion")
    return _address_callee(entries[0], "diversion") if entries else None


def _index_key(position: int, value: str) -> tuple[int, tuple[int, ...], int]:
    """Sort key of a History-Info entry: valid indexes by number, others last, stable."""
    try:
        index = parse_name_addr(value).params.get("index") or ""
    except InvalidHeader:
        index = ""
    if not _INDEX.fullmatch(index):
        return (1, (), position)
    return (0, tuple(int(part) for part in index.split(".")), position)


def _earliest_history_info(request: Request) -> Callee | None:
    """The History-Info entry with the lowest index."""
    entries = header_values(request.headers, "History-Info")
    if not entries:
        return None
    ranked = sorted(enumerate(entries), key=lambda pair: _index_key(*pair))
    return _address_callee(ranked[0][1], "history-info")


def _to(request: Request) -> Callee | None:
    """The To URI."""
    value = request.headers.get("To")
    return None if value is None else _address_callee(value, "to")


def _request_uri(request: Request) -> Callee | None:
    """The Request-URI."""
    return _uri_callee(request.uri, "request-uri")


# The sources of the callee, most authoritative first.
_SOURCES: tuple[Callable[[Request], Callee | None], ...] = (
    _first_diversion,
    _earliest_history_info,
    _to,
    _request_uri,
)


def find_callee(request: Request) -> Callee | None:
    """The dialed extension and its domain, both from the first URI that names a user:
    Diversion, else History-Info, else To, else Request-URI."""
    # One URI for both: a call forwarded by one tenant's extension must not be filed under
    # another tenant because the To header names that tenant's domain.
    for source in _SOURCES:
        callee = source(request)
        if callee is not None:
            return callee
    return None


def callee_extension(request: Request) -> str | None:
    """Return the dialed extension: Diversion, else History-Info, else To, else Request-URI."""
    callee = find_callee(request)
    return callee.extension if callee else None


def request_domain(request: Request) -> str | None:
    """Return the SIP domain the call is for: the host of the URI the extension came from."""
    callee = find_callee(request)
    return callee.domain if callee else None
