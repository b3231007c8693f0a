"""Who a call is for: the callee extension and SIP domain of an INVITE (RFC 5806, RFC 7044)."""

from __future__ import annotations

import re
from collections.abc import Callable

from voicedashd.sip.fields import InvalidHeader, header_values, parse_name_addr
from voicedashd.sip.message import Request
from voicedashd.sip.uri import InvalidUri, SipUri, TelUri, UnsupportedUriScheme, parse_uri

_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
_INDEX = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})*")


def _uri_user(uri_text: str) -> str | None:
    """Return the user (sip/sips) or number (tel) of a URI, or None."""
    try:
        uri = parse_uri(uri_text)
    except (InvalidUri, UnsupportedUriScheme):
        return None
    if isinstance(uri, TelUri):
        return uri.digits or None
    user = uri.user
    if user and (uri.params.get("user") or "").lower() == "phone":
        user = user.split(";", 1)[0].translate(_VISUAL_SEPARATORS)  # a telephone-subscriber
    return user or None


def _address_user(value: str) -> str | None:
    """Return the URI user part of a name-addr/addr-spec header value, or None."""
    try:
        return _uri_user(parse_name_addr(value).uri)
    except InvalidHeader:
        return None


def _first_diversion(request: Request) -> str | None:
    """User part of the first (topmost) Diversion entry."""
    entries = header_values(request.headers, "Diversion")
    return _address_user(entries[0]) if entries else None


def _index_key(position: int, value: str) -> tuple[int, tuple[int, ...], int]:
    """Sort key of a History-Info entry: valid indexes by number, others last, stable."""
    try:
        index = parse_name_addr(value).params.get("index") or ""
    except InvalidHeader:
        index = ""
    if not _INDEX.fullmatch(index):
        return (1, (), position)
    return (0, tuple(int(part) for part in index.split(".")), position)


def _earliest_history_info(request: Request) -> str | None:
    """User part of the History-Info entry with the lowest index."""
    entries = header_values(request.headers, "History-Info")
    if not entries:
        return None
    ranked = sorted(enumerate(entries), key=lambda pair: _index_key(*pair))
    return _address_user(ranked[0][1])


def _to_user(request: Request) -> str | None:
    """User part of the To URI."""
    value = request.headers.get("To")
    return None if value is None else _address_user(value)


def _request_uri_user(request: Request) -> str | None:
    """User part of the Request-URI."""
    return _uri_user(request.uri)


# The sources of the callee, most authoritative first.
_SOURCES: tuple[Callable[[Request], str | None], ...] = (
    _first_diversion,
    _earliest_history_info,
    _to_user,
    _request_uri_user,
)


def callee_extension(request: Request) -> str | None:
    """Return the dialed extension: Diversion, else History-Info, else To, else Request-URI."""
    for source in _SOURCES:
        user = source(request)
        if user:
            return user
    return None


def _uri_host(uri_text: str) -> str | None:
    """Return the lower-cased host of a sip/sips URI, or None."""
    try:
        uri = parse_uri(uri_text)
    except (InvalidUri, UnsupportedUriScheme):
        return None
    return uri.host.lower() if isinstance(uri, SipUri) else None


def request_domain(request: Request) -> str | None:
    """Return the SIP domain the call is for: host of the To URI, else of the Request-URI."""
    to = request.headers.get("To")
    if to is not None:
        try:
            host = _uri_host(parse_name_addr(to).uri)
        except InvalidHeader:
            host = None
        if host:
            return host
    return _uri_host(request.uri)
