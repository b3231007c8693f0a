"""The Refer-To URI of a transfer, from a tenant's template (`transfer_target`)."""

from __future__ import annotations

import string

from .uri import InvalidUri, SipUri, UnsupportedUriScheme, parse_uri

DEFAULT_TRANSFER_TARGET = "sip:{extension}@{pbx_host}"
PLACEHOLDERS = frozenset({"extension", "pbx_host", "tenant"})
# RFC 3261 §25.1 "unreserved": safe anywhere in a URI. Everything else a value brings is
# %-escaped, so no value can end the URI (>), add parameters (;) or headers (?), or a line.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-_.!~*'()")
_SAMPLE = {"extension": "1001", "pbx_host": "192.0.2.10", "tenant": "acme"}


class InvalidTransferTarget(ValueError):
    """A transfer_target template, or what it gives, is not a usable sip:/sips: URI."""


def escape(value: str) -> str:
    """value %-escaped (UTF-8) for any part of a SIP URI, keeping unreserved characters."""
    return "".join(ch if ch in _UNRESERVED else "".join(f"%{b:02X}" for b in ch.encode())
                   for ch in value)


def uri_host(host: str) -> str:
    """An IP literal as a URI host: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def render_refer_to(template: str, *, extension: str, pbx_host: str, tenant: str) -> str:
    """The Refer-To URI for a call; InvalidTransferTarget if it is not a sip:/sips: URI."""
    try:
        text = template.format(extension=escape(extension), pbx_host=uri_host(pbx_host),
                               tenant=escape(tenant))
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidTransferTarget(f"bad placeholder: {exc}") from None
    try:
        uri = parse_uri(text)
    except (InvalidUri, UnsupportedUriScheme) as exc:
        raise InvalidTransferTarget(str(exc)) from None
    if not isinstance(uri, SipUri):
        raise InvalidTransferTarget(f"must be a sip: or sips: URI, got {text[:60]!r}")
    return text


def check_transfer_target(template: str) -> str:
    """Accept a template with known placeholders only that renders a sip:/sips: URI."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template)
                  if name is not None}
    except ValueError as exc:
        raise InvalidTransferTarget(f"bad placeholder syntax: {exc}") from None
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise InvalidTransferTarget(f"unknown placeholder {{{sorted(unknown)[0]}}}; use "
                                    "{extension}, {pbx_host} or {tenant}")
    render_refer_to(template, **_SAMPLE)
    return template
